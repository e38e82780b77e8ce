"""The codec: what is encoded decodes to the same thing, the wire forms are the
documented ones, and anything malformed raises MalformedMessage, nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.bus import (
    Announce,
    Canary,
    Kick,
    MalformedMessage,
    NodeMessage,
    PrivateMessage,
    Publication,
    UnknownMessage,
    decode_broadcast,
    decode_node_message,
    decode_publication,
    encode_body,
    encode_message,
    encode_publication,
)
from services.common.bus.codec import MAX_NAME_CHARS, MAX_PAYLOAD_BYTES, MAX_TEXT_CHARS

# No deadline: the suite must pass on a loaded machine; no example database on disk.
SETTINGS = settings(deadline=None, database=None, max_examples=200)

# Text as it reaches the codec: decoded UTF-8, so no lone surrogates.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=50)
words = st.text(st.characters(exclude_categories=("Cs", "Z", "C")), min_size=1, max_size=20)
kinds = st.sampled_from(["msg", "act", "join", "leave", "enter", "part", "nick"])
epochs = st.integers(min_value=0, max_value=10**17).map(str)
seqs = st.integers(min_value=0, max_value=2**63)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


# -- publications -----------------------------------------------------------------------------
@SETTINGS
@given(epochs, seqs, words, kinds, text, text, text, st.text("0123456789", max_size=6), times)
def test_a_publication_round_trips(
    epoch: str, seq: int, room: str, kind: str, nick: str, body_text: str, gateway: str,
    pub_id: str, at: float,
) -> None:
    body = encode_body(kind, nick, body_text, gateway, pub_id, at=at)
    pub = decode_publication(encode_publication(epoch, seq, room, body))
    assert pub == Publication(epoch, seq, kind, nick, body_text, gateway, round(at, 6), pub_id)


def test_the_envelope_is_compact_json_with_the_id_only_when_given() -> None:
    body = encode_body("msg", "ålice", "hi", "gw1~a", "7", at=1764089890.1234567)
    assert body == '{"k":"msg","n":"ålice","x":"hi","g":"gw1~a","t":1764089890.123457,"i":"7"}'
    assert '"i"' not in encode_body("leave", "a", "", "g")


def test_optional_fields_default_and_extra_fields_are_ignored() -> None:
    pub = decode_publication(b'1 2 #r {"k":"join","n":"bob","new":[1]}')
    assert pub == Publication("1", 2, "join", "bob", "", "", 0.0, "")
    # The reap script's envelope: cjson, any key order, an integer time.
    lua = b'17 3 #r {"x":"gateway lost","k":"leave","t":1764089890,"g":"g~1","n":"Bob"}'
    assert decode_publication(lua).time == 1764089890.0


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"1 2 #r",
        b"1 2 #r [1]",
        b'1 2 #r "text"',
        b"1 2 #r null",
        b"1 2 #r {",
        b'1 2 #r {"n":"a"}',  # no kind
        b'1 2 #r {"k":"msg"}',  # no nick
        b'1 2 #r {"k":1,"n":"a"}',
        b'1 2 #r {"k":"msg","n":["a"]}',
        b'1 2 #r {"k":"msg","n":"a","x":null}',
        b'1 2 #r {"k":"msg","n":"a","t":"now"}',
        b'1 2 #r {"k":"msg","n":"a","t":true}',
        b'1 2 #r {"k":"msg","n":"a","t":NaN}',
        b'1 2 #r {"k":"msg","n":"a","i":7}',
        b'x 2 #r {"k":"msg","n":"a"}',
        b'1 -2 #r {"k":"msg","n":"a"}',
        b'1 2.5 #r {"k":"msg","n":"a"}',
        b'1 2  {"k":"msg","n":"a"}',  # no room
        b'1 2 #r {"k":"msg","n":"\xff"}',
    ],
)
def test_a_malformed_publication_raises_malformed_message(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_publication(payload)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_malformed_message(payload: bytes) -> None:
    try:
        decode_publication(payload)
    except MalformedMessage:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
envelopes = st.dictionaries(st.sampled_from(["k", "n", "x", "g", "t", "i", "z"]), json_values)


@SETTINGS
@given(json_values | envelopes)
def test_any_json_body_decodes_or_raises_malformed_message(value: object) -> None:
    payload = b"1 2 #r " + json.dumps(value).encode()
    try:
        pub = decode_publication(payload)
    except MalformedMessage:
        return
    assert isinstance(pub.kind, str) and isinstance(pub.nick, str) and isinstance(pub.time, float)


# -- node and broadcast messages --------------------------------------------------------------
node_messages = st.one_of(
    st.just(Canary()),
    st.builds(Kick, nick=text, reason=text),
    st.builds(PrivateMessage, to=text, sender=text, text=text),
)


@SETTINGS
@given(node_messages)
def test_a_node_message_round_trips(message: NodeMessage) -> None:
    assert decode_node_message(encode_message(message)) == message
    assert decode_node_message(encode_message(message).encode()) == message


@SETTINGS
@given(text)
def test_an_announcement_round_trips(announcement: str) -> None:
    assert decode_broadcast(encode_message(Announce(announcement))) == Announce(announcement)


def test_the_wire_forms_are_the_documented_ones() -> None:
    """docs/OPERATIONS.md section 3; gateways and chat-admin of this version send these."""
    assert encode_message(Canary()) == '{"t":"canary"}'
    assert encode_message(Kick("Bob", "spam")) == '{"t":"kick","nick":"Bob","reason":"spam"}'
    assert (
        encode_message(PrivateMessage("bob", "Alice", "hé"))
        == '{"t":"pm","to":"bob","from":"Alice","text":"hé"}'
    )
    assert encode_message(Announce("hi")) == '{"t":"announce","text":"hi"}'
    # chat-admin's json.dumps (spaces, ASCII escapes) decodes the same.
    admin = json.dumps({"t": "kick", "nick": "Bøb", "reason": "x"})
    assert decode_node_message(admin) == Kick("Bøb", "x")
    assert decode_node_message(b'{"t":"kick","nick":"bob"}') == Kick("bob", "")


@pytest.mark.parametrize(
    "data",
    [
        b"[1]",
        b"{}",
        b"null",
        b"not json",
        b"\xff\xfe",
        b'{"t":1}',
        b'{"t":"kick"}',
        b'{"t":"kick","nick":3}',
        b'{"t":"kick","nick":"a","reason":null}',
        b'{"t":"pm","to":"a","from":"b"}',
        b'{"t":"pm","to":"a","from":"b","text":5}',
    ],
)
def test_a_malformed_node_message_raises_malformed_message(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_node_message(data)


@pytest.mark.parametrize("data", [b"[1]", b'{"t":"announce"}', b'{"t":"announce","text":1}'])
def test_a_malformed_broadcast_raises_malformed_message(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_broadcast(data)


def test_a_type_this_version_does_not_know_is_unknown_not_an_error_of_form() -> None:
    with pytest.raises(UnknownMessage) as caught:
        decode_node_message(b'{"t":"reload","soon":true}')
    assert caught.value.type_name == "reload"
    with pytest.raises(UnknownMessage):
        decode_node_message(encode_message(Announce("not for one node")))
    with pytest.raises(UnknownMessage):
        decode_broadcast(encode_message(Canary()))
    assert issubclass(UnknownMessage, MalformedMessage) and issubclass(MalformedMessage, ValueError)


@SETTINGS
@given(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_input_to_the_message_decoders_decodes_or_raises_malformed_message(
    data: bytes,
) -> None:
    for decode in (decode_node_message, decode_broadcast):
        try:
            decode(data)
        except MalformedMessage:
            pass


# -- hostile payloads: bounded, and still only MalformedMessage ------------------------------
@pytest.mark.parametrize(
    "decode", [decode_node_message, decode_broadcast, lambda d: decode_publication(b"1 2 #r " + d)]
)
@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,  # past the JSON parser's recursion limit
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"t":"announce","text":"' + b"x" * (MAX_PAYLOAD_BYTES + 1) + b'"}',
        b'{"t":"pm","to":"a","from":"' + b"n" * (MAX_NAME_CHARS + 1) + b'","text":"x"}',
        b'{"t":"announce","text":"\xc3\x28"}',
        b'{"t":"announce","text":"' + b"x" * (MAX_TEXT_CHARS + 1) + b'"}',
        b'{"k":"msg","n":"' + b"n" * (MAX_NAME_CHARS + 1) + b'"}',
        b"\xef\xbb\xbf[1]",
        "[1]".encode("utf-16"),
    ],
)
def test_hostile_payloads_raise_malformed_message(decode: Any, data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(data)


def test_numbers_too_long_for_int_are_malformed() -> None:
    with pytest.raises(MalformedMessage):
        decode_publication(b"1 " + b"9" * 5000 + b' #r {"k":"msg","n":"a"}')
    with pytest.raises(MalformedMessage):
        decode_publication(b"9" * 5000 + b' 1 #r {"k":"msg","n":"a"}')


# Valid envelopes with one part broken: a field's bytes replaced by hostile ones.
hostile_bytes = st.sampled_from(
    [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\ud800", b"[" * 3000, b"1e999", b"-1", b"9" * 30,
     b'"', b"\\", b"\x00", b"}", b"{", b"null", b"true", "\u202e".encode(), b"\\u2028"]
)


@SETTINGS
@given(
    st.sampled_from(["kick", "pm", "announce", "canary", "x"]),
    st.lists(st.tuples(st.sampled_from(["t", "nick", "reason", "to", "from", "text"]),
                       st.lists(hostile_bytes | st.binary(max_size=8), max_size=4)), max_size=5),
)
def test_broken_envelopes_decode_or_raise_malformed_message(
    kind: str, fields: list[tuple[str, list[bytes]]]
) -> None:
    body = b'{"t":"' + kind.encode() + b'"'
    for name, parts in fields:
        body += b',"' + name.encode() + b'":"' + b"".join(parts) + b'"'
    body += b"}"
    for decode in (decode_node_message, decode_broadcast):
        try:
            decoded = decode(body)
        except MalformedMessage:
            continue
        assert isinstance(decoded, Canary | Kick | PrivateMessage | Announce)
    try:
        pub = decode_publication(b"1 2 #r " + body.replace(b'"t"', b'"k"'))
    except MalformedMessage:
        return
    assert isinstance(pub.kind, str) and isinstance(pub.nick, str)
