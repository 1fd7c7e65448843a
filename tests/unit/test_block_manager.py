import pytest

from paddlellm.engine.block_manager import BlockManager


def test_append_grows_table_and_counts_free_blocks():
    bm = BlockManager(num_blocks=8, block_size=4)
    table: list[int] = []
    assert bm.append(table, 1) == [0]
    assert bm.append(table, 4) == []  # still fits in the first block
    new = bm.append(table, 9)
    assert len(new) == 2 and table == [0, *new]
    assert (bm.num_free_blocks, bm.num_used_blocks, bm.num_total_blocks) == (5, 3, 8)


def test_append_is_all_or_nothing():
    bm = BlockManager(num_blocks=3, block_size=4)
    a: list[int] = []
    b: list[int] = []
    bm.append(a, 8)
    assert bm.append(b, 9) is None
    assert b == [] and bm.num_free_blocks == 1


def test_free_returns_blocks_and_detects_double_free():
    bm = BlockManager(num_blocks=4, block_size=2)
    a: list[int] = []
    bm.append(a, 7)
    held = list(a)
    bm.free(a)
    assert a == [] and bm.num_free_blocks == 4
    with pytest.raises(RuntimeError, match="freed twice or never allocated"):
        bm.free(held)


def test_blocks_are_never_shared():
    bm = BlockManager(num_blocks=10, block_size=3)
    tables = [[] for _ in range(5)]
    for i, t in enumerate(tables):
        bm.append(t, 2 * i + 1)
    bm.free(tables[1])
    bm.append(tables[4], 15)
    ids = [b for t in tables for b in t]
    assert len(ids) == len(set(ids)) == bm.num_used_blocks


def test_blocks_for():
    bm = BlockManager(num_blocks=1, block_size=64)
    assert [bm.blocks_for(n) for n in (0, 1, 64, 65)] == [0, 1, 1, 2]
