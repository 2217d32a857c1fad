"""Take a ModelInferRequest's tensor bytes straight out of its wire encoding, without copying.

Parsing the whole message with protobuf copies each `raw_input_contents` blob into the
message, and reading the field copies it again into a new `bytes`: for a 600 KB image that
is two copies, ~40 µs and, past the offload size, two thread handoffs. Here the top level of
the message is walked by hand: field 7 entries become memoryviews of the bytes grpcio gave
us (the arrays are built on them), everything else is joined into a small "head" that
protobuf parses as usual. Only the top level is walked, and only up to `MAX_FIELDS` fields,
so a message made of millions of tiny fields cannot hold the event loop: it is left to the
ordinary (offloaded) parse.
"""

from __future__ import annotations

from ..errors import InvalidInput

RAW_INPUT_CONTENTS = 7  # ModelInferRequest.raw_input_contents
MAX_FIELDS = 256  # top-level fields walked before giving up (None: parse the usual way)


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise InvalidInput(f"the ModelInferRequest message does not parse: bad varint at byte {pos}")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def split_raw_contents(buf: bytes, max_head: int | None = None) -> tuple[bytes, list[memoryview]] | None:
    """(the message without field 7, field 7's entries as views of `buf`, in order), or None
    when the message has more than MAX_FIELDS top-level fields or, with raw contents, more than
    `max_head` other bytes (joining those would be a large copy). Raises InvalidInput for a
    message whose top level is not well-formed protobuf."""
    view = memoryview(buf)
    end = len(buf)
    head: list[memoryview] = []
    contents: list[memoryview] = []
    pos = kept_from = 0
    for _ in range(MAX_FIELDS):
        if pos >= end:
            break
        start = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise InvalidInput(f"the ModelInferRequest message does not parse: field number 0 at byte {start}")
        if wire == 0:
            _, pos = _varint(buf, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if field == RAW_INPUT_CONTENTS and pos + length <= end:
                if start > kept_from:
                    head.append(view[kept_from:start])
                contents.append(view[pos:pos + length])
                pos += length
                kept_from = pos
                continue
            pos += length
        else:
            raise InvalidInput(f"the ModelInferRequest message does not parse: wire type {wire} at byte {start}")
        if pos > end:
            raise InvalidInput(f"the ModelInferRequest message does not parse: truncated field {field} at byte {start}")
    else:
        if pos < end:
            return None
    if not contents:
        return buf, contents
    if kept_from < end:
        head.append(view[kept_from:end])
    if max_head is not None and sum(len(h) for h in head) > max_head:
        return None
    return b"".join(head), contents
