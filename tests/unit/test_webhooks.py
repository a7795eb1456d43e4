"""Webhook signing, backoff, target checks, the pinned transport, the notifier, expiry at
claim, the sweeper."""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.celery_app import COOPERATIVE_GRACE_S, job_deadline_s, job_time_limits
from shared.config import Settings
from shared.jobs import JobRecord, JobStatus, Webhook, new_job_id, now
from shared.payloads import PayloadStore
from shared.registry import ModelSpec
from shared.store import keys
from shared.store.jobs import Claim, JobStore, connect
from shared.store.sweeper import sweep_if_due, sweep_payloads
from shared.store.webhook_snapshots import WebhookSnapshots
from shared.webhooks import (
    WebhookNotifier,
    WebhookTargetRefused,
    backoff_s,
    check_target,
    secret_key,
    sign,
    signed_headers,
)
from tests.webhook_receiver import Receiver
from workers.webhooks import webhook_session

# The published Standard Webhooks test vector.
VECTOR = dict(
    secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    msg_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
    timestamp=1614265330,
    body=b'{"test": 2432232314}',
    signature="v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
)


def test_signature_matches_the_standard_webhooks_vector():
    key = secret_key(VECTOR["secret"])
    assert sign(key, VECTOR["msg_id"], VECTOR["timestamp"], VECTOR["body"]) == VECTOR["signature"]
    headers = signed_headers(key, VECTOR["msg_id"], VECTOR["body"], VECTOR["timestamp"])
    assert headers["webhook-id"] == VECTOR["msg_id"]
    assert headers["webhook-timestamp"] == "1614265330"
    assert headers["webhook-signature"] == VECTOR["signature"]
    assert "webhook-signature" not in signed_headers(None, "msg_1", b"{}")


def test_secret_setting_is_validated():
    assert Settings(webhook_secret="").webhook_secret is None
    bare = VECTOR["secret"].removeprefix("whsec_")
    assert Settings(webhook_secret=bare).webhook_secret == VECTOR["secret"]
    for bad in ("whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(ValueError, match="webhook_secret"):
            Settings(webhook_secret=bad)


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    low = [backoff_s(n, base_s=1, max_s=30, rand=lambda: 0.0) for n in range(1, 8)]
    high = [backoff_s(n, base_s=1, max_s=30, rand=lambda: 1.0) for n in range(1, 8)]
    assert high == [1, 2, 4, 8, 16, 30, 30]
    assert low == [h / 2 for h in high]
    assert backoff_s(1, base_s=1, max_s=30, retry_after="12", rand=lambda: 0.0) == 12
    assert backoff_s(1, base_s=1, max_s=30, retry_after="900", rand=lambda: 0.0) == 30
    assert backoff_s(1, base_s=1, max_s=30, retry_after="soon", rand=lambda: 1.0) == 1


def resolver(*addresses):
    def resolve(host, port, type=0):
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port))
            for a in addresses
        ]

    return resolve


def test_targets_resolving_to_private_addresses_are_refused():
    check_target("https://hooks.example/x", allow_private=False, resolve=resolver("93.184.216.34"))
    for addresses in [
        ("10.0.0.5",),
        ("93.184.216.34", "127.0.0.1"),
        ("::ffff:127.0.0.1",),
        ("fd00::1",),
        ("100.64.0.1",),
        ("169.254.169.254",),
    ]:
        with pytest.raises(WebhookTargetRefused, match="resolves to"):
            check_target(
                "https://hooks.example/x", allow_private=False, resolve=resolver(*addresses)
            )


def test_unresolvable_and_malformed_targets_are_refused():
    def fail(*_a, **_k):
        raise socket.gaierror("no such host")

    with pytest.raises(WebhookTargetRefused, match="cannot be resolved"):
        check_target("http://nowhere.example/", allow_private=False, resolve=fail)
    for url in ("ftp://x.example/", "http:///path", "http://x.example:99999/", "javascript:1"):
        with pytest.raises(WebhookTargetRefused):
            check_target(url, allow_private=True, resolve=fail)


def test_real_resolver_refuses_loopback_names_and_allow_private_skips_dns():
    with pytest.raises(WebhookTargetRefused):
        check_target("http://localhost:8080/hook", allow_private=False)
    with pytest.raises(WebhookTargetRefused):
        check_target("http://127.0.0.1:8080/hook", allow_private=False)

    def must_not_resolve(*_a, **_k):
        raise AssertionError("resolved although private targets are allowed")

    check_target("http://localhost:8080/hook", allow_private=True, resolve=must_not_resolve)


class CountingResolver:
    """A resolver that maps every name to the next of `answers` (the last one repeats)."""

    def __init__(self, *answers: str) -> None:
        self.answers = answers
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host, port, type=0):
        self.calls.append((host, port))
        address = self.answers[min(len(self.calls), len(self.answers)) - 1]
        return resolver(address)(host, port, type)


@pytest.fixture
def receiver():
    rx = Receiver()
    yield rx
    rx.close()


def test_transport_connects_to_the_resolved_address_with_the_original_host(receiver):
    # .invalid never resolves in real DNS: the request arrives only through our resolver.
    resolve = CountingResolver("127.0.0.1")
    url = receiver.url_at("hooks.invalid")
    for _ in range(2):
        with webhook_session(allow_private=True, resolve=resolve) as session:
            assert session.post(url, data=b"{}", timeout=5).status_code == 200
    got = receiver.all()
    assert [(d.path, d.headers["host"]) for d in got] == [
        ("/hook", f"hooks.invalid:{receiver.port}")
    ] * 2
    assert resolve.calls == [("hooks.invalid", receiver.port)] * 2  # once per connection


@pytest.mark.parametrize("answers", [("127.0.0.1",), ("93.184.216.34", "127.0.0.1")])
def test_transport_refuses_a_private_answer_as_it_connects(receiver, answers):
    session = webhook_session(allow_private=False, resolve=resolver(*answers))
    with session, pytest.raises(WebhookTargetRefused, match="127.0.0.1"):
        session.post(receiver.url_at("hooks.example"), data=b"{}", timeout=5)
    assert receiver.all() == []


def test_transport_ignores_proxies_from_the_environment(receiver, monkeypatch):
    # A proxy would resolve the name itself; this one does not exist, so using it fails.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with webhook_session(allow_private=True, resolve=CountingResolver("127.0.0.1")) as session:
        assert session.post(receiver.url_at("hooks.invalid"), timeout=5).status_code == 200


def make_tls(tmp_path, name: str) -> tuple[ssl.SSLContext, str]:
    """Return a server context for `name` signed by a CA made now, and that CA's PEM path."""

    def cert(subject: str, key, issuer: str, issuer_key, *, ca: bool):
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_cert = cert("conveyor test CA", ca_key, "conveyor test CA", ca_key, ca=True)
    leaf = cert(name, leaf_key, "conveyor test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return context, str(tmp_path / "ca.pem")


def test_transport_keeps_sni_and_certificate_checks_on_the_host_name(tmp_path):
    context, ca = make_tls(tmp_path, "hooks.test")
    sni: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    rx = Receiver(tls=context)
    resolve = CountingResolver("127.0.0.1")
    try:
        with webhook_session(allow_private=True, resolve=resolve) as session:
            resp = session.post(rx.url_at("hooks.test"), data=b"{}", verify=ca, timeout=5)
            assert resp.status_code == 200
            # The certificate names hooks.test, not the address we connected to.
            with pytest.raises(requests.exceptions.SSLError, match="match|mismatch"):
                session.post(rx.url_at("other.test"), data=b"{}", verify=ca, timeout=5)
            # Verification stays on: our CA is not in the default bundle.
            with pytest.raises(requests.exceptions.SSLError, match="verify"):
                session.post(rx.url_at("hooks.test"), data=b"{}", timeout=5)
        assert sni == ["hooks.test", "other.test", "hooks.test"]
        assert [d.headers["host"] for d in rx.all()] == [f"hooks.test:{rx.port}"]
    finally:
        rx.close()


def test_job_deadline_is_capped_by_the_model_and_celery_limits_sit_past_it():
    settings = Settings(default_time_limit_s=600)
    spec = ModelSpec.model_validate(
        {"id": "e", "backend": "echo", "tasks": ["echo"], "limits": {"time_limit_s": 5}}
    )
    assert job_deadline_s(spec, settings, None) == 5
    assert job_deadline_s(spec, settings, 100) == 5
    assert job_deadline_s(spec, settings, 2) == 2
    unlimited = spec.model_copy(
        update={"limits": spec.limits.model_copy(update={"time_limit_s": None})}
    )
    assert job_deadline_s(unlimited, settings, None) == 600
    # The backend stops itself at the deadline (partial output kept); Celery's limits are
    # the backstop, a little later.
    soft, hard = job_time_limits(spec, settings, 2)
    assert soft == 2 + COOPERATIVE_GRACE_S and hard > soft


@pytest.fixture(scope="module")
def store(redis_db):
    return JobStore(connect(redis_db()), ttl_s=120)


def job_with(store, events=("start", "output", "completed"), **fields) -> JobRecord:
    hook = Webhook(url="http://127.0.0.1:1/hook", events=list(events)) if events else None
    job = JobRecord(
        id=new_job_id(), model="echo", task="echo", created_at=now(), webhook=hook, **fields
    )
    return store.create(job)


def test_notifier_throttles_output_and_sends_completed_once(store):
    sent: list[str] = []
    notifier = WebhookNotifier(store, sent.append, ttl_s=60, output_interval_s=0.3)
    job = job_with(store)
    notifier.started(job)
    for i in range(20):
        notifier.output(job, lambda i=i: {"text": "x" * i})
    assert [s.split("_")[2] for s in sent] == ["start", "output"]
    time.sleep(0.35)
    notifier.output(job, lambda: {"text": "later"})
    assert len(sent) == 3
    snap = json.loads(WebhookSnapshots.from_store(store).get(sent[2]))
    assert snap["event"] == "output" and json.loads(snap["body"])["output"] == {"text": "later"}
    notifier.ended(store.get(job.id))  # not terminal yet: nothing
    ended = store.mark_canceled(job.id)
    notifier.ended(ended)
    WebhookNotifier(store, sent.append, ttl_s=60).ended(ended)  # another process, same event
    assert [s.split("_")[2] for s in sent] == ["start", "output", "output", "completed"]
    body = json.loads(json.loads(WebhookSnapshots.from_store(store).get(sent[-1]))["body"])
    assert body["status"] == "canceled" and body["id"] == job.id


def test_notifier_respects_the_filter_and_survives_a_failed_send(store):
    sent: list[str] = []
    notifier = WebhookNotifier(store, sent.append, ttl_s=60)
    plain = job_with(store, events=None)
    only_done = job_with(store, events=["completed"])
    for job in (plain, only_done):
        notifier.started(job)
        notifier.output(job, lambda: {"text": "t"})
    assert sent == []

    def broken(msg_id):
        raise ConnectionError("broker down")

    WebhookNotifier(store, broken, ttl_s=60).ended(store.mark_canceled(only_done.id))
    notifier.ended(store.get(only_done.id))  # the failed send did not eat the event
    assert sent == [f"msg_{only_done.id}_completed"]


def test_claim_refuses_a_job_past_its_queue_timeout(store):
    job = job_with(store, events=None, queue_timeout_s=0.2)
    time.sleep(0.25)
    assert store.claim(job.id, "w1", lease_s=5, max_deliveries=3) == Claim.EXPIRED
    rec = store.get(job.id)
    assert rec.status == JobStatus.FAILED and rec.error.type == "expired"
    assert rec.started_at is None and rec.attempts == 0
    assert job.id not in store.queued_ids("echo")
    assert store.read_events(job.id)[-1][2]["status"] == "failed"
    fresh = job_with(store, events=None, queue_timeout_s=30)
    assert store.claim(fresh.id, "w1", lease_s=5, max_deliveries=3) == Claim.RUN


def test_requeued_job_does_not_expire():
    job = JobRecord(
        id="j",
        model="m",
        task="echo",
        created_at=now() - 10,
        queue_timeout_s=1,
        started_at=now() - 9,
    )
    assert not job.queue_expired(now())
    assert job.model_copy(update={"started_at": None}).queue_expired(now())


def test_sweeper_removes_ended_and_vanished_payloads_only(store, tmp_path):
    payloads = PayloadStore(f"file://{tmp_path}", max_bytes=1024)
    live = job_with(store, events=None)
    ended = job_with(store, events=None)
    store.mark_canceled(ended.id)
    for job_id in (live.id, ended.id, "vanished-old", "vanished-new"):
        payloads.put(job_id, "001-image", b"x" * 10)
    old = time.time() - 3600
    for path in (tmp_path / "vanished-old", tmp_path / "vanished-old" / "001-image"):
        os.utime(path, (old, old))
    assert sorted(sweep_payloads(store, payloads, grace_s=600)) == sorted(
        [ended.id, "vanished-old"]
    )
    assert sorted(payloads.job_ids()) == sorted([live.id, "vanished-new"])
    assert payloads.age_s(live.id) < 60 and payloads.age_s("vanished-old") is None
    assert sweep_payloads(store, payloads, grace_s=0) == ["vanished-new"]
    # The periodic sweep runs once per interval across the fleet.
    store.r.delete(keys.SWEEP_LOCK)
    assert sweep_if_due(store, payloads, interval_s=30, grace_s=0, owner="a") == []
    assert sweep_if_due(store, payloads, interval_s=30, grace_s=0, owner="b") is None
