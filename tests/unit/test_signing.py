import hashlib
import hmac

from app.api.signing import AuthResult, check_psp, check_request, sign, sign_psp

NOW = 1_700_000_000


def test_signature_is_hmac_sha256_over_the_spec_message():
    body = b'{"a":1}'
    expected = hmac.new(b"dev-secret", f"{NOW}\nPOST\n/v1/x?y=1\n".encode() + body, hashlib.sha256).hexdigest()
    assert sign("dev-secret", str(NOW), "post", "/v1/x?y=1", body) == expected


def check(**overrides):
    args = dict(secret="dev-secret", timestamp=str(NOW), method="POST", path_with_query="/v1/x", body=b"{}",
                now_s=NOW, max_skew_s=300)
    args["signature"] = sign("dev-secret", args["timestamp"], "POST", "/v1/x", b"{}")
    args.update(overrides)
    return check_request(**args)


def test_good_signature_passes():
    assert check() is AuthResult.OK
    assert check(signature=sign("dev-secret", str(NOW), "POST", "/v1/x", b"{}").upper()) is AuthResult.OK


def test_each_failure_has_its_code():
    assert check(signature=None) is AuthResult.MISSING_SIGNATURE
    assert check(timestamp=None) is AuthResult.MISSING_SIGNATURE
    assert check(secret=None) is AuthResult.UNKNOWN_API_KEY
    assert check(now_s=NOW + 301) is AuthResult.STALE_TIMESTAMP
    assert check(now_s=NOW - 301) is AuthResult.STALE_TIMESTAMP
    assert check(now_s=NOW + 300) is AuthResult.OK
    assert check(timestamp="soon") is AuthResult.STALE_TIMESTAMP
    assert check(body=b'{"x":1}') is AuthResult.INVALID_SIGNATURE
    assert check(path_with_query="/v1/x?y=2") is AuthResult.INVALID_SIGNATURE
    assert check(method="GET") is AuthResult.INVALID_SIGNATURE


def test_psp_signature():
    body = b'{"event_id":"e1"}'
    assert check_psp("sandbox-secret", body, sign_psp("sandbox-secret", body))
    assert not check_psp("sandbox-secret", body, sign_psp("other", body))
    assert not check_psp("sandbox-secret", body, None)
