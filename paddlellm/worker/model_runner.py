"""ModelRunner: keeps per-request state, turns a SchedulerOutput into one forward pass, samples.

A step (`execute`):
1. drop finished requests; register new ones (full state); apply cached requests' changes (appended tokens
   and blocks, computed-token count);
2. order the batch: single-token requests (decodes) first, then prefill chunks; gather token ids, positions
   and slots for the step's tokens and build the attention metadata and rotary tables once for all layers;
3. one forward pass over all tokens; LM head only on the last row of requests whose chunk reaches the end
   of their known tokens; sample those rows (with their logprobs for the requests that asked; rows with a
   grammar under the mask the step carries, sampler.py);
4. prompt logprobs: for a request with sampling_params.prompt_logprobs, each row j of its chunk whose next
   prompt token j+1 exists also goes through the LM head, in slices of PROMPT_LOGPROB_ROWS rows (a slice's
   logits are rows x vocab floats), and yields token j+1's TokenLogprobs. The scheduler gives such a request
   no cached prefix until it holds them all, so every prompt position is computed (the scheduler keeps one
   entry per position, so a recompute after preemption duplicates nothing).
5. speculative decoding: a request with a draft (SchedulerOutput.draft_token_ids) feeds its last known token
   and the k draft tokens; all 1 + k rows go through the LM head and are sampled, row j at position end + j
   with the draft's first j tokens as extra history (its own per-position draw, so row j gives what a plain
   decode would after accepting them). The accepted run is the draft's matching prefix plus the first sampled
   token that differs (or the bonus token). The draft's KV is written like any chunk's; the scheduler rolls
   back what was rejected (num_computed and the block table come from it).
6. images (NewRequestData.mm): a prefill chunk that overlaps an image's placeholder run gets that image's
   embeddings in its placeholder rows (image_embeds.py runs the vision tower once per image and holds the rows
   until the run is computed), then `forward_embeds`. Such a request's prompt rows rotate by its 3-D M-RoPE
   positions, every later row (outputs, drafts, recomputes) by i + rope delta, which is a plain 1-D row. A
   step with no image prompt rows takes the 1-D path; one without images at all is exactly the text path.
The native kernels run each step with the team size TeamTuner measured fastest for steps of its size
(layers/thread_team.py: fewer threads can be faster beside the serving path; the bits are the same).
Under tensor parallelism every rank runs the LM head (it all-reduces), but only rank 0's output is read
(executor/rank_messages.py), so only rank 0 turns logits into logprobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle

from paddlellm.config import EngineConfig
from paddlellm.cpu import read_cpu
from paddlellm.errors import InvalidRequest
from paddlellm.kv_cache_dtype import resolve_kv_cache_dtype
from paddlellm.layers.attention import AttentionMetadata, SeqSpan
from paddlellm.layers.host_tensor import StepTensors
from paddlellm.layers.kernels import select_kernels
from paddlellm.layers.linear import AllReduce, Shard
from paddlellm.layers.mrope import MRotaryRows
from paddlellm.layers.rotary import RotaryTables
from paddlellm.layers.thread_team import TeamTuner
from paddlellm.model_info import ModelInfo
from paddlellm.models.decoder import DecoderModel
from paddlellm.models.qwen2_5_vl_vision import Qwen2_5_VisionTower
from paddlellm.quant_blocks import resolved_quantization
from paddlellm.sampling import SamplingParams
from paddlellm.step_types import (
    CachedRequestData,
    ModelRunnerOutput,
    MultiModalPrompt,
    NewRequestData,
    SchedulerOutput,
    TokenLogprobs,
)
from paddlellm.vision.vl_config import VLConfig
from paddlellm.weight_reader import WeightReader
from paddlellm.worker.cpu_tuning import tune_process
from paddlellm.worker.image_embeds import ImageChunk, ImageEmbeds
from paddlellm.worker.kv_cache import KVCache
from paddlellm.worker.sampler import Sampler, SampleRow, token_logprobs

PROMPT_LOGPROB_ROWS = 64  # prompt rows per LM-head slice: 64 x a 49k vocab = 12.5 MB of float32 logits


@dataclass
class _RequestState:
    token_ids: list[int]  # prompt + outputs known to the runner
    num_prompt: int
    block_table: list[int]
    sampling_params: SamplingParams
    seed: int
    num_computed: int
    mm: MultiModalPrompt | None = None


class ModelRunner:
    def __init__(
        self,
        config: EngineConfig,
        info: ModelInfo,
        num_blocks: int,
        rank: int = 0,
        world: int = 1,
        all_reduce: AllReduce | None = None,
    ) -> None:
        self.config = config
        self.info = info
        self.rank = rank
        cpu = read_cpu()
        tune_process(cpu)  # process-wide, but every process that runs the model wants it (cpu_tuning.py)
        if config.quantization == "auto":  # resolved from the checkpoint, once, in every rank alike
            quantization = resolved_quantization(config.quantization, config.dtype, info.path)
            config = config.replace(quantization=quantization)
            self.config = config
        with paddle.no_grad():
            self.kernels = select_kernels(config, cpu)
            self.tuner = TeamTuner(self.kernels.team)
            shard = Shard(rank, world)
            self.model = DecoderModel(
                info, WeightReader(info.path), shard, all_reduce, self.kernels, not config.enforce_eager
            )
        layer = self.model.layers[0]
        self.kv_heads, self.group, self.head_dim = layer.kv_heads, layer.group, layer.head_dim
        self.block_size = config.block_size
        self.kv_dtype = resolve_kv_cache_dtype(
            config.kv_cache_dtype, config.quantization, self.kernels.native is not None
        )
        self.cache = KVCache(
            info.num_layers, self.kv_heads, self.head_dim, num_blocks, config.block_size, self.kv_dtype
        )
        self.rotary = RotaryTables(info.head_dim, info.rope_theta, info.rope_scaling, config.max_model_len)
        # Per-step inputs come from reusable buffers: Paddle leaks per constructed tensor (host_tensor.py).
        self.stage = StepTensors(on_cpu=config.device != "gpu")
        self.sampler = Sampler(info.eos_token_ids, self.stage)
        self.requests: dict[str, _RequestState] = {}
        self.images: ImageEmbeds | None = None
        self.mrope: MRotaryRows | None = None
        if config.enable_mm and info.vision is not None:  # every rank: the tower is replicated
            vl = VLConfig.from_dir(info.path)
            with paddle.no_grad():
                self.images = ImageEmbeds(Qwen2_5_VisionTower(vl.vision, WeightReader(info.path)))
            self.mrope = MRotaryRows(self.rotary, vl.mrope_section)

    # ---- state -------------------------------------------------------------------------------------------
    def _apply(self, sched: SchedulerOutput) -> None:
        for rid in sched.finished_request_ids:
            self.requests.pop(rid, None)
            if self.images is not None:
                self.images.drop(rid)
        for new in sched.new_requests:
            if new.mm is not None and self.images is None:
                raise RuntimeError(f"request {new.request_id!r} has images but this runner has no tower")
            if self.images is not None:  # a re-sent request (preempted) starts without held embeddings
                self.images.drop(new.request_id)
            self.requests[new.request_id] = self._new_state(new)
        for cached in sched.cached_requests:
            st = self.requests.get(cached.request_id)
            if st is None:
                raise RuntimeError(f"runner has no state for cached request {cached.request_id!r}")
            st.token_ids.extend(cached.new_token_ids)
            if cached.num_kept_blocks >= 0:  # blocks of rejected draft tokens were released
                del st.block_table[cached.num_kept_blocks :]
            st.block_table.extend(cached.new_block_ids)
            st.num_computed = cached.num_computed_tokens
        self.cache.copy_rows(sched.block_copies)  # partial prefix hits, before anything writes KV

    @staticmethod
    def _new_state(new: NewRequestData) -> _RequestState:
        return _RequestState(
            list(new.prompt_token_ids) + list(new.output_token_ids),
            len(new.prompt_token_ids),
            list(new.block_ids),
            new.sampling_params,
            new.seed,
            new.num_computed_tokens,
            new.mm,
        )

    # ---- step --------------------------------------------------------------------------------------------
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self._apply(sched)
        if sched.is_empty:
            return ModelRunnerOutput({})
        # The native kernels' team size for this step: the fastest measured for its size (thread_team.py).
        drafts = sched.draft_token_ids
        prefill = any(n - len(drafts.get(rid, ())) > 1 for rid, n in sched.num_scheduled_tokens.items())
        self.tuner.begin(len(sched.num_scheduled_tokens), prefill)
        try:
            return self._step(sched)
        finally:
            self.tuner.end()

    def _step(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        items = list(sched.num_scheduled_tokens.items())
        order = [it for it in items if it[1] == 1] + [it for it in items if it[1] > 1]
        num_decode = sum(1 for _, n in items if n == 1)
        spans: list[SeqSpan] = []
        ids: list[int] = []
        sample_rows: list[int] = []
        sample_info: list[tuple[str, SampleRow]] = []
        drafts: dict[str, tuple[int, int, tuple[int, ...]]] = {}  # rid -> (first sample row, 1 + k, draft)
        prompt_rows: list[tuple[str, int, int]] = []  # (request, its first row in the batch, its chunk start)
        image_chunks: list[ImageChunk] = []  # chunks of requests with images
        row = 0
        for rid, n in order:
            st = self.requests.get(rid)
            if st is None:
                raise RuntimeError(f"runner has no state for scheduled request {rid!r}")
            draft = sched.draft_token_ids.get(rid, ())
            start, end = st.num_computed, st.num_computed + n
            known_end = end - len(draft)
            if known_end > len(st.token_ids) or end > self.config.max_model_len or (
                draft and known_end != len(st.token_ids)
            ):
                raise RuntimeError(
                    f"request {rid!r}: scheduled tokens [{start}, {end}) with a draft of {len(draft)} beyond "
                    f"its {len(st.token_ids)} known tokens or max_model_len"
                )
            spans.append(SeqSpan(start, n, st.block_table))
            ids.extend(st.token_ids[start:known_end])
            ids.extend(draft)
            p = st.sampling_params
            if p.prompt_logprobs is not None and start < st.num_prompt - 1:
                prompt_rows.append((rid, row, start))
            if st.mm is not None:
                image_chunks.append(ImageChunk(rid, st.mm, row, start, end))
            row += n
            st.num_computed = end
            if draft:
                drafts[rid] = (len(sample_info), len(draft) + 1, draft)
                outputs = st.token_ids[st.num_prompt :] if p.needs_history else []
                masks = sched.grammar_masks.get(rid)  # one row per drafted position (grammar_rows.py)
                if masks is not None and masks.shape[0] != len(draft) + 1:
                    raise RuntimeError(f"request {rid!r}: {masks.shape[0]} masks for {len(draft) + 1} rows")
                for j in range(len(draft) + 1):
                    sample_rows.append(row - len(draft) - 1 + j)
                    history = outputs + list(draft[:j]) if p.needs_history else ()
                    num_outputs = known_end - st.num_prompt + j
                    mask = None if masks is None else masks[j]
                    sample_row = SampleRow(p, st.seed, known_end + j, history, num_outputs, mask)
                    sample_info.append((rid, sample_row))
            elif end == len(st.token_ids):
                sample_rows.append(row - 1)
                # the output ids are copied only when the sampler reads them
                outputs = st.token_ids[st.num_prompt :] if p.needs_history else ()
                mask = sched.grammar_masks.get(rid)  # the scheduler's: every rank applies the same one
                sample_info.append((rid, SampleRow(p, st.seed, end, outputs, end - st.num_prompt, mask)))
        positions = np.concatenate([np.arange(s.start, s.start + s.num_new) for s in spans])
        with paddle.no_grad():
            positions3, image_rows = self._image_inputs(image_chunks, positions)
            hidden = self._forward(
                np.asarray(ids, dtype=np.int64), positions, spans, num_decode, positions3, image_rows
            )
            prompt_lps = {rid: self._prompt_logprobs(hidden, rid, r, s) for rid, r, s in prompt_rows}
            if not sample_rows:
                return ModelRunnerOutput({}, {}, self._only_rank0(prompt_lps))
            if len(sample_rows) < hidden.shape[0]:
                hidden = paddle.gather(hidden, self.stage(np.asarray(sample_rows, dtype=np.int64)))
            logits = self.model.logits(hidden)
            rows = [r for _, r in sample_info]
            if self.rank == 0 and any(r.sampling_params.logprobs is not None for r in rows):
                tokens, lps = self.sampler.sample_with_logprobs(logits, rows)
            else:
                tokens, lps = self.sampler.sample(logits, rows), [None] * len(rows)
        if not drafts:
            rids = [rid for rid, _ in sample_info]
            return ModelRunnerOutput(
                dict(zip(rids, tokens, strict=True)),
                {rid: lp for rid, lp in zip(rids, lps, strict=True) if lp is not None},
                self._only_rank0(prompt_lps),
            )
        return self._verified(sample_info, tokens, lps, drafts, self._only_rank0(prompt_lps))

    @staticmethod
    def _verified(
        sample_info: list[tuple[str, SampleRow]],
        tokens: list[int],
        lps: list[TokenLogprobs | None],
        drafts: dict[str, tuple[int, int, tuple[int, ...]]],
        prompt_lps: dict[str, tuple[int, tuple[TokenLogprobs, ...]]],
    ) -> ModelRunnerOutput:
        """The step's output when some requests had drafts: for each, the accepted run (the sampled tokens up
        to and including the first that differs from the draft) and its logprobs; one token for the rest."""
        sampled: dict[str, int] = {}
        logprobs: dict[str, TokenLogprobs] = {}
        runs: dict[str, tuple[int, ...]] = {}
        run_lps: dict[str, tuple[TokenLogprobs, ...]] = {}
        for i, (rid, _) in enumerate(sample_info):
            if rid not in drafts:
                sampled[rid] = tokens[i]
                if lps[i] is not None:
                    logprobs[rid] = lps[i]  # type: ignore[assignment]
        for rid, (first, rows, draft) in drafts.items():
            m = 1
            while m < rows and tokens[first + m - 1] == draft[m - 1]:
                m += 1
            runs[rid] = tuple(tokens[first : first + m])
            entries = lps[first : first + m]
            if all(e is not None for e in entries):
                run_lps[rid] = tuple(e for e in entries if e is not None)
        return ModelRunnerOutput(sampled, logprobs, prompt_lps, runs, run_lps)

    def _prompt_logprobs(
        self, hidden: paddle.Tensor, rid: str, first_row: int, start: int
    ) -> tuple[int, tuple[TokenLogprobs, ...]]:
        """Token j+1's logprobs from row j, for the rows j of this chunk (rows first_row.. of `hidden`, chunk
        positions start..) whose next prompt token exists; (start + 1, entries). Every rank runs the LM head
        (TP all-reduces in it); the host work is rank 0's alone (other ranks return no entries)."""
        st = self.requests[rid]
        n_top = st.sampling_params.prompt_logprobs or 0
        stop = min(st.num_computed, st.num_prompt - 1)  # st.num_computed: this chunk's end
        entries: list[TokenLogprobs] = []
        for lo in range(start, stop, PROMPT_LOGPROB_ROWS):
            hi = min(lo + PROMPT_LOGPROB_ROWS, stop)
            rows = np.arange(first_row + lo - start, first_row + hi - start, dtype=np.int64)
            logits = self.model.logits(paddle.gather(hidden, self.stage(rows)))
            if self.rank == 0:
                targets = st.token_ids[lo + 1 : hi + 1]
                entries.extend(token_logprobs(logits.numpy(), targets, [n_top] * len(targets)))
        return start + 1, tuple(entries)

    def _only_rank0(
        self, prompt_lps: dict[str, tuple[int, tuple[TokenLogprobs, ...]]]
    ) -> dict[str, tuple[int, tuple[TokenLogprobs, ...]]]:
        return prompt_lps if self.rank == 0 else {}

    def _image_inputs(
        self, chunks: list[ImageChunk], positions: np.ndarray
    ) -> tuple[np.ndarray | None, tuple[np.ndarray, paddle.Tensor] | None]:
        """For the chunks of requests with images: shift `positions` (in place) of their rows past the prompt
        by the rope delta; their prompt rows' 3-D positions ([3, T] for the whole step, others (p, p, p)) if
        any; the step's placeholder rows and their embeddings (the vision tower runs here) if any."""
        if not chunks:
            return None, None
        prompt_chunks = []
        for c in chunks:
            num_prompt = c.mm.positions.shape[1]
            in_prompt = max(0, min(c.end, num_prompt) - c.start)
            positions[c.first_row + in_prompt : c.first_row + c.end - c.start] += c.mm.rope_delta
            if in_prompt:
                prompt_chunks.append((c, in_prompt))
        if not prompt_chunks:  # decodes and drafts only: 1-D rows at i + delta
            return None, None
        assert self.images is not None  # requests with images were refused without a tower (_apply)
        positions3 = np.repeat(positions[None, :], 3, axis=0)
        for c, in_prompt in prompt_chunks:
            rows = slice(c.first_row, c.first_row + in_prompt)
            positions3[:, rows] = c.mm.positions[:, c.start : c.start + in_prompt]
        self.stage.reset()  # the tower's inputs; _forward resets again (the embeddings are computed by then)
        return positions3, self.images.step_rows([c for c, _ in prompt_chunks], self.stage)

    def _forward(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        spans: list[SeqSpan],
        num_decode: int,
        positions3: np.ndarray | None = None,
        image_rows: tuple[np.ndarray, paddle.Tensor] | None = None,
    ) -> paddle.Tensor:
        """One forward pass. `positions3`: 3-D M-RoPE positions of every row (steps with image prompt rows);
        `image_rows`: batch rows and the image embeddings that replace their token embeddings."""
        self.stage.reset()  # the previous step's input tensors are done with
        meta = AttentionMetadata.build(
            spans,
            num_decode,
            self.block_size,
            self.cache.num_slots,
            self.kv_heads,
            self.group,
            self.kernels.decode_attention,
            tensor=self.stage,
        )
        if positions3 is not None:
            assert self.mrope is not None  # only requests with images have 3-D positions
            if self.model.native_rope:
                cos, sin = self.mrope.rows(positions3)
            else:
                cos, sin = self.mrope.expand(positions3, self.model.qk_heads, self.model.v_heads)
        elif self.model.native_rope:
            cos, sin = self.rotary.rows(positions)
        else:
            cos, sin = self.rotary.expand(positions, self.model.qk_heads, self.model.v_heads)
        if image_rows is None:
            return self.model.forward(
                self.stage(ids), self.stage(cos), self.stage(sin), meta, self.cache.layers
            )
        rows, embeds = image_rows
        x = self.model.embed(self.stage(ids))
        x = paddle.scatter(x, self.stage(rows), embeds.astype(x.dtype), overwrite=True)
        return self.model.forward_embeds(x, self.stage(cos), self.stage(sin), meta, self.cache.layers)

    # ---- utilities ---------------------------------------------------------------------------------------
    def prompt_logits(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Logits [T, vocab] of a whole prompt in one prefill (parity tests). Overwrites the first KV blocks:
        not for use while requests are being served."""
        ids = np.asarray(token_ids, dtype=np.int64)
        t = len(ids)
        blocks = -(-t // self.block_size)
        if t == 0 or t > self.config.max_model_len or blocks > self.cache.num_blocks:
            raise InvalidRequest(
                f"prompt of {t} tokens does not fit max_model_len / the KV cache", param="prompt"
            )
        spans = [SeqSpan(0, t, list(range(blocks)))]
        with paddle.no_grad():
            hidden = self._forward(ids, np.arange(t), spans, num_decode=1 if t == 1 else 0)
            return self.model.logits(hidden).numpy()

    def warmup(self) -> None:
        """Dummy prefill and decode steps (greedy and sampled rows) at the sizes serving will use, so the
        first real request pays no first-call costs. Dummies share block 0 onwards; their state is dropped."""

        blocks = self.cache.num_blocks
        prefill_len = max(
            2,
            min(512, self.config.batched_tokens, self.config.max_model_len - 2, blocks * self.block_size - 2),
        )
        table = tuple(range(-(-(prefill_len + 2) // self.block_size)))
        seqs = max(1, self.config.max_num_seqs)
        params = (
            SamplingParams(temperature=0.0, max_tokens=4),
            SamplingParams(temperature=0.8, top_p=0.9, max_tokens=4),
        )
        news = tuple(
            NewRequestData(
                f"__warmup{i}",
                tuple(range(1, 3)) if i else tuple(range(prefill_len)),
                (),
                params[i % 2],
                i,
                table,
                0,
            )
            for i in range(seqs)
        )
        ids = [n.request_id for n in news]
        out = self.execute(SchedulerOutput(news, (), {n.request_id: len(n.prompt_token_ids) for n in news}))
        for batch in (ids, ids[:1]):
            cached = tuple(
                CachedRequestData(r, (out.sampled_token_ids[r],), (), self.requests[r].num_computed)
                for r in batch
            )
            out = self.execute(SchedulerOutput((), cached, {r: 1 for r in batch}))
        self.execute(SchedulerOutput((), (), {}, frozenset(ids)))
