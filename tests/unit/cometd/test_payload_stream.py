"""The incremental splitter against every split point of recorded responses."""

from __future__ import annotations

import json

import pytest

from bridge.cometd.payload_stream import Oversize, PayloadStream, PayloadStreamError


# A cometd-nodejs-server /meta/connect response: the queue, then the reply (escapes, nested
# arrays, non-ASCII, a string holding brackets and an escaped backslash before a quote).
RECORDED = (
    b'[{"data":{"seq":1,"pad":"a]b}c{d[e"},"channel":"/bench/r1"},'
    b' {"data":{"text":"quote \\" and backslash \\\\","list":[1,[2,{"x":"}"}]]},'
    b'"channel":"/a/b","id":"7"},\n'
    b'{"data":{"name":"\xc3\xa9t\xc3\xa9 \\\\\\""},"channel":"/c"},'
    b'{"id":"2","channel":"/meta/connect","successful":true,"advice":{"timeout":0}}]'
)


def _items(chunks: list[bytes], cap: int = 1 << 20) -> list[object]:
    stream = PayloadStream(cap, json.loads)
    out: list[object] = []
    for chunk in chunks:
        stream.feed(chunk)
        while (item := stream.next()) is not None:
            if isinstance(item, Oversize):
                out.append(item)
            else:
                obj, _ = item
                out.append(obj)
    stream.close()
    return out


def test_every_split_point_gives_the_same_messages() -> None:
    expected = json.loads(RECORDED)
    assert _items([RECORDED]) == expected
    for cut in range(1, len(RECORDED)):
        assert _items([RECORDED[:cut], RECORDED[cut:]]) == expected, f"split at byte {cut}"


def test_one_byte_at_a_time() -> None:
    chunks = [RECORDED[i : i + 1] for i in range(len(RECORDED))]
    assert _items(chunks) == json.loads(RECORDED)


def test_oversize_items_are_skipped_with_their_size_at_every_split() -> None:
    big = json.dumps({"channel": "/big", "data": {"pad": "x\\" * 50}}).encode()
    body = b'[{"channel":"/a"},' + big + b',{"channel":"/b"}]'
    for cut in range(1, len(body)):
        out = _items([body[:cut], body[cut:]], cap=60)
        assert out == [{"channel": "/a"}, Oversize(len(big)), {"channel": "/b"}], cut


def test_held_bytes_stay_bounded_while_items_are_taken() -> None:
    item = json.dumps({"channel": "/x", "data": {"pad": "p" * 2000}}).encode()
    stream = PayloadStream(1 << 20, json.loads)
    stream.feed(b"[")
    for _ in range(1000):
        stream.feed(item + b",")
        assert stream.next() == (json.loads(item), len(item))
        assert stream.buffered < 2 * len(item)
    stream.feed(b"]")
    assert stream.next() is None
    stream.close()


def test_a_bare_object_is_one_item() -> None:
    assert _items([b' {"channel":"/meta/connect"} ']) == [{"channel": "/meta/connect"}]


def test_scalar_items_are_passed_on_for_validation() -> None:
    assert _items([b'[1, "a,]", {"channel":"/a"} , null]']) == [1, "a,]", {"channel": "/a"}, None]


@pytest.mark.parametrize("body", [b"<html>", b'[{"channel":"/a"}', b'[{"channel":"/a"}] x', b""])
def test_a_body_that_is_not_a_json_array_fails_clearly(body: bytes) -> None:
    with pytest.raises(PayloadStreamError):
        _items([body])


def test_sizes_are_the_bytes_of_each_item_as_received_at_every_split() -> None:
    items = [
        b'{"channel":"/a","data":{"t":"\xc3\xa9\\\\"}}',
        b'{ "channel" : "/b", "data" : [{"x":"},{"}, {}] }',
        b'{"channel":"/c","data":null}',
    ]
    body = b"[" + b" ,\n".join(items) + b"]"
    for cut in range(1, len(body)):
        stream = PayloadStream(1 << 20, json.loads)
        sizes: list[int] = []
        for chunk in (body[:cut], body[cut:]):
            stream.feed(chunk)
            while (item := stream.next()) is not None:
                assert not isinstance(item, Oversize)
                sizes.append(item[1])
        stream.close()
        assert sizes == [len(i) for i in items], f"split at byte {cut}"
