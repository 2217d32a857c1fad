"""The pure decisions of authentication (modelship_server.auth.decide), and the key file
rules, without a server."""

from __future__ import annotations

from modelship_server.auth.decide import (ALLOWED, FORBIDDEN, UNAUTHENTICATED, Verdict, access_review_body, bearer,
                                          judge_access_review, judge_token_review, looks_like_jwt, parse_key_file,
                                          service_account_of, token_review_body)
from modelship_server.auth.gate import Gate, GateConfig


def test_bearer_header_forms():
    assert bearer(None) is None
    assert bearer(b"Bearer abc") == "abc"
    assert bearer("bearer   abc  ") == "abc"
    v = bearer("Basic dXNlcjpwYXNz")
    assert isinstance(v, Verdict) and v.outcome == UNAUTHENTICATED and "Bearer scheme" in v.message
    assert "dXNlcjpwYXNz" not in v.message
    assert isinstance(bearer("Bearer a b"), Verdict)
    assert isinstance(bearer("Bearer"), Verdict)


def test_key_file_lines_and_jwt_shape():
    assert parse_key_file("# comment\n k1 \n\nk2\n") == ["k1", "k2"]
    assert looks_like_jwt("aaa.bbb.ccc")
    assert not looks_like_jwt("aaa.bbb") and not looks_like_jwt("a..c")


def test_token_review_outcomes():
    assert token_review_body("t", ["aud"])["spec"] == {"token": "t", "audiences": ["aud"]}
    assert "audiences" not in token_review_body("t", [])["spec"]
    v, _ = judge_token_review({"authenticated": False, "error": "token has expired"}, [], frozenset())
    assert v is not None and v.outcome == UNAUTHENTICATED and "token has expired" in v.message
    user = {"username": "system:serviceaccount:apps:caller", "groups": ["system:serviceaccounts"]}
    v, _ = judge_token_review({"authenticated": True, "user": user, "audiences": ["other"]}, ["modelship"], frozenset())
    assert v is not None and v.outcome == UNAUTHENTICATED and "['other']" in v.message
    v, u = judge_token_review({"authenticated": True, "user": user, "audiences": ["modelship"]}, ["modelship"],
                              frozenset({"apps/caller"}))
    assert v is None and u == user
    v, _ = judge_token_review({"authenticated": True, "user": user}, [], frozenset({"apps/other"}))
    assert v is not None and v.outcome == FORBIDDEN and "apps/other" in v.message
    assert service_account_of("system:serviceaccount:ns:n") == "ns/n"
    assert service_account_of("alice") is None


def test_access_review_outcomes():
    user = {"username": "system:serviceaccount:apps:caller", "groups": ["g"], "uid": "u1"}
    body = access_review_body(user, "ml", "fraud", "infer")
    assert body["spec"]["resourceAttributes"] == {"group": "modelship.dev", "resource": "modelservices",
                                                  "verb": "infer", "namespace": "ml", "name": "fraud"}
    assert body["spec"]["uid"] == "u1"
    assert judge_access_review({"allowed": True}, user, "ml", "fraud", "infer").outcome == ALLOWED
    v = judge_access_review({"allowed": False}, user, "ml", "fraud", "infer")
    assert v.outcome == FORBIDDEN and v.http_status == 403 and "may not infer modelservices/fraud" in v.message


def test_gate_answers_keys_and_shapes_without_the_network(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("secret-one\n")
    gate = Gate(GateConfig(api_keys=keys))
    gate.start()
    assert gate.quick("Bearer secret-one").allowed
    v = gate.quick("Bearer secret-two")
    assert v is not None and v.http_status == 401 and "not a known API key" in v.message
    assert gate.quick(None).http_status == 401
    keys.write_text("secret-two\n")
    gate.keys.sig = ()  # as if the watch saw a change
    gate.maybe_reload()
    assert gate.quick("Bearer secret-two").allowed and not gate.quick("Bearer secret-one").allowed
    assert gate.outcomes[("apikey", "allowed")] == 2
    gate.close()

