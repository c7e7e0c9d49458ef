#!/usr/bin/env python3
"""Subscriptions (docs/subscriptions.md): what an active at-least-once
destination costs writes, and how long a notification takes from the change
to its receiver. One server and one receiver: with `--kind webhook`, a
threaded HTTP server in this process that acknowledges at once and notes
when each notification arrived; with `--kind kafka`, a tansu broker
(target/tools/tansu, scripts/kafka-broker.sh) and a consumer in this process
(PyPI confluent-kafka, installed when missing) that notes when each message
arrived:

1. write throughput: `POST /fhir/Patient` under wrk, in interleaved rounds
   with the destination `off` (no notification queued: the baseline) and
   `active` (each create queues one in its transaction and a worker sends
   it); the ratio active / off is the figure (target >= 0.8);
2. latency: creates at a steady rate (one client, a fixed interval) with
   the destination active; for each notification, the time from the
   change's `meta.lastUpdated` (taken just before its transaction commits)
   to its arrival at the receiver: p50 and p99 (goal p50 < 50 ms).

    python3 bench/subscriptions.py [--kind webhook|kafka] [--db sqlite|postgres] [--rounds 3]
                                   [--seconds 5] [--concurrency 16] [--rate 50] [--latency-seconds 10]

Needs the release binary (cargo build --release -p fhirbox-server) and wrk.
Writes DIR/subscriptions-<db>-latest.{md,json} (webhook) or
DIR/subscriptions-kafka-<db>-latest.{md,json} (bench/results by default).
"""
import argparse
import datetime
import http.server
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

PORT = 18431
TOPIC = "http://bench.example/topics/patients"


class Receiver:
    """Acknowledges every notification at once; keeps (arrival, event timestamp)."""

    def __init__(self):
        self.arrivals = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                now = time.time()
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()
                status = json.loads(body)["entry"][0]["resource"]
                with receiver.lock:
                    for event in status["notificationEvent"]:
                        receiver.arrivals.append((now, event["timestamp"]))

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self):
        with self.lock:
            return len(self.arrivals)

    def stop(self):
        self.server.shutdown()


class KafkaReceiver:
    """A tansu broker with topic `bench` (one partition) and a consumer thread
    that keeps (arrival, event timestamp) for each message."""

    def __init__(self):
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "confluent-kafka==2.16.1"], check=True)
        import confluent_kafka
        tansu = os.path.join(run.ROOT, "target", "tools", "tansu")
        if not os.path.exists(tansu):
            subprocess.run([os.path.join(run.ROOT, "scripts", "kafka-broker.sh")], check=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        url = f"tcp://{self.address}"
        self.broker = subprocess.Popen([tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                        "--storage-engine", "memory://tansu/"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        subprocess.run([tansu, "topic", "create", "bench", "--broker", url, "--partitions", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        self.arrivals = []
        self.lock = threading.Lock()
        self.stopping = False
        # Fetches answer at once (a broker holds an empty fetch up to
        # fetch.wait.max.ms, 500 ms by default, which would be measured as
        # delivery latency).
        consumer = confluent_kafka.Consumer({"bootstrap.servers": self.address, "group.id": "bench",
                                             "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        # Assigned directly (a group join is slow), from the beginning.
        consumer.assign([confluent_kafka.TopicPartition("bench", 0, confluent_kafka.OFFSET_BEGINNING)])

        def consume():
            while not self.stopping:
                message = consumer.poll(0.1)
                if message is None or message.error():
                    continue
                now = time.time()
                status = json.loads(message.value())["entry"][0]["resource"]
                with self.lock:
                    for event in status["notificationEvent"]:
                        self.arrivals.append((now, event["timestamp"]))
            consumer.close()

        self.thread = threading.Thread(target=consume, daemon=True)
        self.thread.start()

    def count(self):
        with self.lock:
            return len(self.arrivals)

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.broker.kill()
        self.broker.wait()


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """User + system CPU seconds the processes `pids` have used (proc(5))."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / TICK


def database_pids():
    """PostgreSQL's server processes (their CPU is the database's share of a write)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "postgres":
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def instant(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=("webhook", "kafka"), default="webhook")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=50, help="creates per second in the latency run")
    parser.add_argument("--latency-seconds", type=int, default=10)
    parser.add_argument("--out", default=os.path.join(run.HERE, "results"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fhirbox-subscriptions-")
    url = f"sqlite:{work}/fhirbox.db" if args.db == "sqlite" else run.fresh_pg("fhirbox_subscriptions_bench")
    env = dict(os.environ, BOX_DB_URL=url, BOX_ROOT_CLIENT_SECRET=run.ROOT_SECRET,
               RUST_LOG="warn", BOX_WEB_PORT=str(PORT))
    receiver = Receiver() if args.kind == "webhook" else KafkaReceiver()
    server = run.Server("fhirbox", [f"{run.RELEASE}/fhirbox"], env, PORT)
    root = run.basic(("root", run.ROOT_SECRET))

    def destination(status):
        if args.kind == "webhook":
            kind, parameters = "webhook-at-least-once", [{"name": "endpoint", "valueUrl": receiver.url}]
        else:
            kind = "kafka-at-least-once"
            parameters = [{"name": "kafkaTopic", "valueString": "bench"},
                          {"name": "bootstrapServers", "valueString": receiver.address}]
        body = {"resourceType": "AidboxTopicDestination", "id": "bench", "topic": TOPIC,
                "kind": kind, "status": status, "content": "full-resource", "parameter": parameters}
        assert run.http(PORT, "PUT", "/fhir/AidboxTopicDestination/bench", body, root)[0] in (200, 201)

    def counters():
        status, body = run.http(PORT, "GET", "/fhir/AidboxTopicDestination/bench/$status", None, root)
        if status != 200:
            return None, None
        values = {p["name"]: p.get("valueDecimal") for p in json.loads(body)["parameter"]}
        return values.get("messagesQueued"), values.get("messagesDelivered")

    def drained(expected, within=120):
        """Until the receiver has `expected` notifications and the outbox is empty."""
        deadline = time.time() + within
        while time.time() < deadline:
            queued, _ = counters()
            if receiver.count() >= expected and queued == 0:
                return True
            time.sleep(0.05)
        return False

    def caught_up(within=300):
        """Until the outbox is empty and the receiver has everything delivered
        (a Kafka consumer reads behind the broker's acknowledgments)."""
        deadline = time.time() + within
        while time.time() < deadline:
            queued, delivered = counters()
            if queued == 0 and delivered is not None and receiver.count() >= delivered:
                return True
            time.sleep(0.1)
        return False

    rows = []
    try:
        topic = {"resourceType": "AidboxSubscriptionTopic", "id": "bench", "url": TOPIC,
                 "trigger": [{"resource": "Patient", "supportedInteraction": ["create"]}]}
        assert run.http(PORT, "PUT", "/fhir/AidboxSubscriptionTopic/bench", topic, root)[0] == 201
        script = run.lua("create", 1)
        # Warm-up, then interleaved rounds.
        destination("off")
        run.wrk(PORT, "/", args.concurrency, 2, script, root)
        for n in range(args.rounds):
            for status in ("off", "active"):
                destination(status)
                before = receiver.count()
                # fhirbox's and the database's CPU per create, apart from the
                # receiver's (a broker and a consumer share this machine).
                pids = [server.proc.pid] + (database_pids() if args.db == "postgres" else [])
                cpu_before = cpu_seconds(pids)
                r = run.wrk(PORT, "/", args.concurrency, args.seconds, script, root)
                if status == "active":
                    # The notifications of this round are part of its cost.
                    sent = round(r["rps"] * args.seconds)
                    drained(before + int(sent * 0.9))
                    caught_up()
                cpu_ms = (cpu_seconds(pids) - cpu_before) * 1000 / max(1, round(r["rps"] * args.seconds))
                rows.append(dict(destination=status, round=n + 1, cpu_ms_per_create=cpu_ms, **r))
        # Nothing left from the throughput rounds before the latency run.
        destination("active")
        assert caught_up(), "the receiver did not catch up before the latency run"
        # The destination's new version gets a new client; its first send
        # (a Kafka producer's start: about 0.5 s against tansu) is not the
        # steady state measured below.
        for _ in range(3):
            assert run.http(PORT, "POST", "/fhir/Patient", {"resourceType": "Patient"}, root)[0] == 201
        assert caught_up(), "the warm-up notifications did not arrive"
        # Latency at a steady rate.
        with receiver.lock:
            receiver.arrivals.clear()
        interval = 1.0 / args.rate
        patient = {"resourceType": "Patient", "name": [{"family": "Latency"}]}
        sent = 0
        start = time.time()
        while time.time() - start < args.latency_seconds:
            due = start + sent * interval
            if time.time() < due:
                time.sleep(due - time.time())
            assert run.http(PORT, "POST", "/fhir/Patient", patient, root)[0] == 201
            sent += 1
        complete = drained(sent)
        with receiver.lock:
            delays = [(arrived - instant(stamp)) * 1000 for arrived, stamp in receiver.arrivals]
    finally:
        server.stop()
        receiver.stop()
    errors = sum(r["errors"] for r in rows)
    off = statistics.median(r["rps"] for r in rows if r["destination"] == "off")
    active = statistics.median(r["rps"] for r in rows if r["destination"] == "active")
    cpu_off = statistics.median(r["cpu_ms_per_create"] for r in rows if r["destination"] == "off")
    cpu_active = statistics.median(r["cpu_ms_per_create"] for r in rows if r["destination"] == "active")
    latency = {"sent": sent, "received": len(delays), "complete": complete,
               "p50_ms": percentile(delays, 50) if delays else None,
               "p99_ms": percentile(delays, 99) if delays else None,
               "max_ms": max(delays) if delays else None}
    commit = run.subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=run.ROOT,
                                capture_output=True, text=True).stdout.strip()
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "commit": commit, "kind": args.kind, "db": args.db, "concurrency": args.concurrency, "rounds": rows,
              "write_ratio_active_to_off": active / off if off else 0, "write_rps_off": off,
              "write_rps_active": active, "cpu_ms_per_create_off": cpu_off,
              "cpu_ms_per_create_active": cpu_active, "cpu_ratio_off_to_active": cpu_off / cpu_active if cpu_active else 0,
              "latency": latency, "errors": errors}
    md = [f"# Subscriptions benchmark ({args.kind}, {args.db}, {report['date']}, {commit})", "",
          f"Creates at c={args.concurrency}, {args.rounds} interleaved rounds of {args.seconds} s; "
          f"medians. Ratio = with an active {args.kind} destination (at least once) / with it off "
          "(target >= 0.8).", "",
          run.table(rows, [("destination", lambda r: r["destination"]), ("round", lambda r: str(r["round"])),
                           ("req/s", lambda r: run.fmt(r["rps"])), ("p50 ms", lambda r: run.fmt(r["p50_ms"], 2)),
                           ("p99 ms", lambda r: run.fmt(r["p99_ms"], 2)),
                           ("CPU ms/create", lambda r: run.fmt(r["cpu_ms_per_create"], 3)),
                           ("errors", lambda r: str(r["errors"]))]),
          "", f"- median req/s off {off:.1f}, active {active:.1f}: **ratio {report['write_ratio_active_to_off']:.2f}**",
          f"- CPU per create of fhirbox{' and PostgreSQL' if args.db == 'postgres' else ''} (the receiver's apart; "
          f"an active round includes sending its notifications): off {cpu_off:.3f} ms, active {cpu_active:.3f} ms: "
          f"**cost ratio {report['cpu_ratio_off_to_active']:.2f}**",
          f"- latency at {args.rate} creates/s for {args.latency_seconds} s, change stored to receipt: "
          f"p50 **{run.fmt(latency['p50_ms'], 1)} ms**, p99 {run.fmt(latency['p99_ms'], 1)} ms, "
          f"max {run.fmt(latency['max_ms'], 1)} ms ({latency['received']}/{latency['sent']} received; goal p50 < 50 ms)", ""]
    name = f"subscriptions-{args.db}-latest" if args.kind == "webhook" else f"subscriptions-kafka-{args.db}-latest"
    run.save_report(args.out, name, report, md)
    print("\n".join(md))
    if errors or not complete:
        sys.exit(1)


if __name__ == "__main__":
    main()
