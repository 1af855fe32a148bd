"""Auth on `quiver serve`: static read-write and read-only API keys (api-key header or
Bearer), HS256 JWTs (valid, expired, bad signature, wrong alg, read-only claim), open
health routes, and the real qdrant-client with a key."""
import base64
import hashlib
import hmac
import json
import time

import httpx
import pytest
from qdrant_client import QdrantClient, models

RW, RO, SECRET = "rw-key-123", "ro-key-456", "jwt-secret-789"


@pytest.fixture
def srv(start_quiver_server):
    return start_quiver_server(args=["--api-key", RW, "--read-only-api-key", RO, "--jwt-secret", SECRET], model=False).url


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=SECRET, alg="HS256"):
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{sig}"


CREATE = {"vectors": {"size": 2, "distance": "Dot"}}


def test_health_and_root_are_open(srv):
    for path in ["/healthz", "/livez", "/readyz", "/", "/openapi.json"]:
        assert httpx.get(srv + path).status_code == 200, path


def test_missing_or_wrong_key_is_401(srv):
    r = httpx.get(srv + "/collections")
    assert r.status_code == 401 and "API key" in r.json()["error"]
    assert httpx.get(srv + "/collections", headers={"api-key": "nope"}).status_code == 401
    assert httpx.get(srv + "/collections", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(srv + "/collections", headers={"api-key": RW + "x"}).status_code == 401
    assert httpx.get(srv + "/collections", headers={"api-key": RW[:-1]}).status_code == 401
    assert httpx.get(srv + "/metrics").status_code == 401


def test_read_write_key_by_header_and_bearer(srv):
    assert httpx.put(srv + "/collections/a", json=CREATE, headers={"api-key": RW}).status_code == 200
    r = httpx.put(srv + "/collections/a/points", json={"points": [{"id": 1, "vector": [1, 2]}]},
                  headers={"Authorization": f"Bearer {RW}"})
    assert r.status_code == 200
    assert httpx.get(srv + "/collections", headers={"Authorization": f"Bearer {RW}"}).json()["result"]["collections"] == [{"name": "a"}]


def test_read_only_key_reads_but_may_not_write(srv):
    httpx.put(srv + "/collections/a", json=CREATE, headers={"api-key": RW})
    httpx.put(srv + "/collections/a/points", json={"points": [{"id": 1, "vector": [1, 2]}]}, headers={"api-key": RW})
    h = {"api-key": RO}
    assert httpx.get(srv + "/collections/a", headers=h).status_code == 200
    r = httpx.post(srv + "/collections/a/points/query", json={"query": [1, 0]}, headers=h)
    assert r.status_code == 200 and r.json()["result"]["points"][0]["id"] == 1
    for method, path, body in [("PUT", "/collections/b", CREATE), ("DELETE", "/collections/a", None),
                               ("PUT", "/collections/a/points", {"points": [{"id": 2, "vector": [0, 1]}]}),
                               ("POST", "/collections/a/points/delete", {"points": [1]}),
                               ("POST", "/collections/a/points/payload", {"payload": {"x": 1}, "points": [1]})]:
        r = httpx.request(method, srv + path, json=body, headers=h)
        assert r.status_code == 403, (method, path, r.text)
        assert "read-only" in r.json()["error"]
    # Nothing changed.
    r = httpx.post(srv + "/collections/a/points/count", json={}, headers=h)
    assert r.json()["result"]["count"] == 1


def test_jwt(srv):
    now = int(time.time())
    ok = jwt({"exp": now + 600, "access": "m"})
    assert httpx.put(srv + "/collections/j", json=CREATE, headers={"Authorization": f"Bearer {ok}"}).status_code == 200
    assert httpx.get(srv + "/collections", headers={"api-key": ok}).status_code == 200
    # No exp claim: valid (Qdrant makes exp optional).
    assert httpx.get(srv + "/collections", headers={"api-key": jwt({"access": "m"})}).status_code == 200
    ro = jwt({"exp": now + 600, "access": "r"})
    assert httpx.get(srv + "/collections/j", headers={"api-key": ro}).status_code == 200
    assert httpx.delete(srv + "/collections/j", headers={"api-key": ro}).status_code == 403
    expired = jwt({"exp": now - 10, "access": "m"})
    r = httpx.get(srv + "/collections", headers={"api-key": expired})
    assert r.status_code == 401 and "expired" in r.json()["error"]
    bad_sig = jwt({"exp": now + 600}, secret="other-secret")
    assert httpx.get(srv + "/collections", headers={"api-key": bad_sig}).status_code == 401
    tampered = ok.split(".")
    tampered[1] = b64(json.dumps({"exp": now + 600, "access": "m", "x": 1}).encode())
    assert httpx.get(srv + "/collections", headers={"api-key": ".".join(tampered)}).status_code == 401
    none_alg = jwt({"exp": now + 600}, alg="none")
    assert httpx.get(srv + "/collections", headers={"api-key": none_alg}).status_code == 401
    for junk in ["a.b.c", "...", "x" * 9000, "e30.e30.", ok + ".x"]:
        assert httpx.get(srv + "/collections", headers={"api-key": junk}).status_code == 401


def test_qdrant_client_with_api_key(srv):
    c = QdrantClient(url=srv, api_key=RW, timeout=30, check_compatibility=False)
    c.create_collection("k", vectors_config=models.VectorParams(size=2, distance=models.Distance.DOT))
    c.upsert("k", points=[models.PointStruct(id=1, vector=[1, 1])])
    assert c.count("k").count == 1
    c.close()
    c = QdrantClient(url=srv, api_key=RO, timeout=30, check_compatibility=False)
    assert c.count("k").count == 1
    with pytest.raises(Exception) as e:
        c.upsert("k", points=[models.PointStruct(id=2, vector=[1, 1])])
    assert "403" in str(e.value)
    c.close()
    c = QdrantClient(url=srv, api_key="wrong", timeout=30, check_compatibility=False)
    with pytest.raises(Exception) as e:
        c.count("k")
    assert "401" in str(e.value)
    c.close()


def test_env_and_config_file_keys(start_quiver_server, tmp_path):
    cfg = tmp_path / "quiver.yaml"
    cfg.write_text("auth:\n  api_keys: [from-file]\n")
    url = start_quiver_server(args=["--config", cfg], env={"QUIVER_READ_ONLY_API_KEY": "from-env"}, model=False).url
    assert httpx.put(url + "/collections/x", json=CREATE, headers={"api-key": "from-file"}).status_code == 200
    assert httpx.get(url + "/collections/x", headers={"api-key": "from-env"}).status_code == 200
    assert httpx.delete(url + "/collections/x", headers={"api-key": "from-env"}).status_code == 403


def _raw_headers_only(url, path, headers, method="POST"):
    """Sends a request's headers declaring a 30 MB body but none of it; returns what the server
    answers within 20 s (b"" if nothing), and whether it then closed the connection."""
    import socket
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n" \
               f"Content-Length: {30 * 1024 * 1024}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        s.sendall(head.encode())
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        return data
    finally:
        s.close()


def test_auth_is_checked_before_the_body_is_read(srv):
    # Without a key (or with a wrong one) the answer comes from the headers alone: the
    # server does not wait for (and buffer) the 30 MB the request declares.
    for headers in ({}, {"api-key": "wrong"}, {"Authorization": "Bearer wrong"}):
        got = _raw_headers_only(srv, "/collections/c/points", headers)
        assert got.startswith(b"HTTP/1.1 401"), (headers, got[:200])
    # A read-only key on a write route: 403, also before the body.
    got = _raw_headers_only(srv, "/collections/c/points", {"api-key": RO}, method="PUT")
    assert got.startswith(b"HTTP/1.1 403"), got[:200]
    # The server keeps serving, and an authenticated request still gets its body read.
    r = httpx.put(srv + "/collections/early", json=CREATE, headers={"api-key": RW})
    assert r.status_code == 200, r.text
    r = httpx.put(srv + "/collections/early2", json=CREATE)
    assert r.status_code == 401, r.text
