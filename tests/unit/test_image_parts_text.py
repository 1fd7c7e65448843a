"""The text side of image parts (issue #29 part 2a): the chat template's view of a message with images, and
the one data-URL parser the gateway and the tokenizer share."""

from __future__ import annotations

import base64

import pytest

from paddlellm.errors import InvalidRequest
from paddlellm.protocol.data_url import data_url, image_media_type, is_remote, parse_image_data_url
from paddlellm.text.chat_template import ChatTemplate, validate_messages


def test_image_markers_keep_the_parts_for_the_template() -> None:
    msgs = [
        {"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "x"}, {"type": "image"}, {"type": "text", "text": "y"}],
        },
    ]
    system, user = validate_messages(msgs)
    assert system["content"] == "a\nb"  # text parts alone: one string, as before
    assert user["content"] == [
        {"type": "text", "text": "x"},
        {"type": "image"},
        {"type": "text", "text": "y"},
    ]
    template = ChatTemplate.compile(
        "{% for m in messages %}{% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}<IMG>{% else %}{{ p['text'] }}{% endif %}{% endfor %}|{% endfor %}"
    )
    assert template.render(msgs[1:]) == "x<IMG>y|"


@pytest.mark.parametrize(
    "part",
    [
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,AAAA"},
        },  # undecoded: not for templates
        {"type": "image", "image": "data:..."},  # a marker carries nothing else
    ],
)
def test_undecoded_image_parts_never_reach_the_template(part: dict) -> None:
    with pytest.raises(InvalidRequest, match="only text parts"):
        validate_messages([{"role": "user", "content": [part]}])


def test_data_urls() -> None:
    data = b"\x89PNG\r\n\x1a\nabc"
    url = data_url("image/png", data)
    assert parse_image_data_url(url, "p").data == data
    assert parse_image_data_url(url.replace("image/png", "IMAGE/JPG"), "p").media_type == "image/jpeg"
    assert parse_image_data_url("data:image/webp;charset=x;base64," + base64.b64encode(data).decode(), "p")
    assert image_media_type("image/webp; q=1") == "image/webp" and image_media_type("image/gif") is None
    assert is_remote("HTTPS://x/y") and not is_remote("data:image/png;base64,")
    with pytest.raises(InvalidRequest, match="limit of 4 bytes") as e:
        parse_image_data_url(url, "messages[0].content[0]", max_bytes=4)
    assert e.value.param == "messages[0].content[0]"
