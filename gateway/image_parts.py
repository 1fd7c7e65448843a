"""Image content parts of a chat request: checked before anything is sent, fetched when allowed.

The gateway never decodes pixels (the tokenizer model does, paddlellm/vision/chat_images.py). Here, per
part `messages[i].content[j]`, in order: refused without --enable-mm; counted against
--limit-mm-per-prompt; a `data:` URL's media type, base64 and size checked (paddlellm/protocol/data_url.py,
the parser the tokenizer uses too); an http(s) URL refused unless its host is in --allowed-media-domains,
and then fetched (`fetch_remote_images`: no redirects, a deadline, a byte limit, an image Content-Type) and
sent on as a data URL. Every refusal is InvalidRequest naming the part.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.openai_schema import ChatMessage
from gateway.settings import GatewaySettings
from paddlellm.errors import InvalidRequest
from paddlellm.protocol.data_url import data_url, image_media_type, is_remote, parse_image_data_url


@dataclass(frozen=True)
class RemoteImage:
    """An allowed http(s) image URL the gateway fetches before the request is sent."""

    message: int
    part: int
    url: str

    @property
    def param(self) -> str:
        return f"messages[{self.message}].content[{self.part}]"


def content_parts(
    m: ChatMessage, i: int, settings: GatewaySettings, seen: int, remote: list[RemoteImage]
) -> list[dict[str, Any]]:
    """The template's parts of message `i` (which has image parts); `seen`: images in earlier messages.
    Allowed remote URLs are appended to `remote` (their part keeps the URL until fetched)."""
    assert isinstance(m.content, list)  # has_images() said so
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(m.content):
        if part.type == "text":
            parts.append({"type": "text", "text": part.text})
            continue
        param = f"messages[{i}].content[{j}]"
        assert part.image_url is not None  # ContentPart's validator
        url = part.image_url.url
        check_image(url, param, settings, seen)
        assert url is not None  # check_image refuses a missing one
        seen += 1
        if is_remote(url):
            remote.append(RemoteImage(i, j, url))
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def check_image(url: str | None, param: str, settings: GatewaySettings, seen: int) -> None:
    if not settings.enable_mm:
        raise InvalidRequest(
            "image content parts are not accepted: this server was started without --enable-mm (it needs "
            "a vision-language model)",
            param,
        )
    if seen >= settings.limit_mm_per_prompt:
        raise InvalidRequest(
            f"too many images: at most {settings.limit_mm_per_prompt} per request (--limit-mm-per-prompt)",
            param,
        )
    if url is None:
        raise InvalidRequest("an image_url part needs image_url.url", f"{param}.image_url.url")
    if is_remote(url):
        if not host_allowed(url, settings.allowed_media_domains):
            raise InvalidRequest(
                "this server does not fetch image URLs from that host (--allowed-media-domains); send the "
                "image as a data: URL (data:image/png;base64,...)",
                param,
            )
        return
    parse_image_data_url(url, param, settings.max_image_bytes)


def host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    return bool(host) and ("*" in allowed or host in {a.lower() for a in allowed})


async def fetch_remote_images(
    messages_json: str, remote: tuple[RemoteImage, ...], client: httpx.AsyncClient, settings: GatewaySettings
) -> str:
    """`messages_json` with each remote image's URL replaced by the data URL of what it served."""
    messages = json.loads(messages_json)
    for image in remote:
        media_type, data = await _fetch(image, client, settings)
        messages[image.message]["content"][image.part]["image_url"]["url"] = data_url(media_type, data)
    return json.dumps(messages, ensure_ascii=False)


async def _fetch(
    image: RemoteImage, client: httpx.AsyncClient, settings: GatewaySettings
) -> tuple[str, bytes]:
    param, limit = image.param, settings.max_image_bytes
    try:
        # Redirects are not followed (the next host may not be an allowed one); one deadline for it all.
        async with asyncio.timeout(settings.media_fetch_timeout_s), client.stream("GET", image.url) as r:
            if r.status_code != 200:
                raise InvalidRequest(f"fetching the image URL gave HTTP {r.status_code}", param)
            media_type = image_media_type(r.headers.get("content-type", ""))
            if media_type is None:
                raise InvalidRequest(
                    f"the image URL served {r.headers.get('content-type')!r}, not a PNG, JPEG or WebP image",
                    param,
                )
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise InvalidRequest(f"the image at the URL exceeds the limit of {limit} bytes", param)
    except (TimeoutError, httpx.TimeoutException):
        raise InvalidRequest(
            f"fetching the image URL took longer than {settings.media_fetch_timeout_s} s", param
        ) from None
    except httpx.HTTPError as e:
        raise InvalidRequest(f"cannot fetch the image URL: {type(e).__name__}", param) from None
    if not body:
        raise InvalidRequest("the image URL served no data", param)
    return media_type, bytes(body)
