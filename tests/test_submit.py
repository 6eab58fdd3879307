"""`submit`, `follow` and `params` against a stand-in Kubeflow Pipelines API: a small HTTP
server on 127.0.0.1 that answers the KFP v2beta1 endpoints kfp.Client calls (healthz,
experiments list/create, run create/get) and the artifact endpoint, and records every
request so the tests can check what a real cluster would receive."""

import http.server
import inspect
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse

import kfp
import pytest
import yaml

from pipelines import rslad_pipeline as rp
from rslad_tf.common.errors import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "tok-3f9a.SECRET-value-42"
RUN_ID = "run-7c1e"
API = "/apis/v2beta1"
REPORT_BYTES = {"a-report": b"# RSLAD report\n| method | AA |\n| rslad | 50.1 |\n",
                "a-table": b'[{"method": "rslad"}]\n',
                "a-plot": b"\x89PNG\r\n\x1a\n" + bytes(range(256))}


def load_yaml(stream):
    return yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def canonical(value) -> str:
    """JSON with sorted keys: equal texts mean equal keys, values and JSON types (3, 3.0,
    "3" and true all differ)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def task(task_id, name, state, outputs=None):
    detail = {"task_id": task_id, "display_name": name, "state": state}
    if outputs:
        detail["outputs"] = {k: {"artifact_ids": [v]} for k, v in outputs.items()}
    return detail


def run_answer(state, tasks=(), error=None):
    answer = {"run_id": RUN_ID, "display_name": "r", "state": state,
              "run_details": {"task_details": list(tasks)}}
    if error:
        answer["error"] = {"code": 2, "message": error}
    return answer


REPORT_TASK = task("t9", "make-report", "SUCCEEDED",
                   {"report": "a-report", "table": "a-table", "plot": "a-plot"})
SUCCESS = [
    run_answer("PENDING"),
    run_answer("RUNNING", [task("t1", "prepare-data", "RUNNING")]),
    run_answer("RUNNING", [task("t1", "prepare-data", "RUNNING")]),  # nothing changed
    run_answer("RUNNING", [task("t1", "prepare-data", "SUCCEEDED"),
                           task("t2", "distill-student", "RUNNING"),
                           task("t3", "distill-student", "RUNNING")]),
    run_answer("SUCCEEDED", [task("t1", "prepare-data", "SUCCEEDED"),
                             task("t2", "distill-student", "SUCCEEDED"),
                             task("t3", "distill-student", "FAILED"), REPORT_TASK]),
]


class StandIn:
    """The KFP API on 127.0.0.1 (free port) in a thread; answers at most ``max_requests``
    requests and lives at most ``lifetime_s`` seconds.

    ``multi_user``/``namespaces``: a multi-user cluster knows these profile namespaces
    (others: 404). ``fail``: ``{(method, path prefix): status}`` answered instead.
    ``flaky``: ``{(method, path prefix): [status, ...]}`` answered once each, in order,
    before the normal answers. ``runs``: the successive answers of GET runs/{id} (the last
    one repeats)."""

    def __init__(self, *, multi_user=False, namespaces=("team-a",), experiments=(),
                 fail=None, flaky=None, runs=SUCCESS, max_requests=80, lifetime_s=30.0):
        self.multi_user, self.namespaces = multi_user, set(namespaces)
        self.experiments = list(experiments)
        self.fail = dict(fail or {})
        self.flaky = {key: list(statuses) for key, statuses in (flaky or {}).items()}
        self.runs, self.polls = list(runs), 0
        self.requests = []
        self.max_requests, self.deadline = max_requests, time.monotonic() + lifetime_s
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                standin._serve(self)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.1
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while (not self._stop.is_set() and len(self.requests) < self.max_requests
               and time.monotonic() < self.deadline):
            self.server.handle_request()
        self.server.server_close()

    def stop(self):
        self._stop.set()
        self.thread.join(timeout=5)

    def _serve(self, handler):
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        self.requests.append({
            "method": handler.command, "path": url.path, "query": query,
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "raw": handler.requestline + "\n" + str(handler.headers) + body.decode("latin-1"),
            "json": json.loads(body) if body else None})
        status, answer = self._answer(handler.command, url.path, query,
                                      self.requests[-1]["json"])
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        handler.send_response(status)
        if status == 302:
            handler.send_header("Location", "https://dex.example/auth?client=kfp")
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, method, path, query, body):
        failing = dict(self.fail)
        for key, statuses in self.flaky.items():
            if statuses and method == key[0] and path.startswith(key[1]):
                failing[key] = statuses.pop(0)
        for (fail_method, prefix), status in failing.items():
            if method == fail_method and path.startswith(prefix):
                return status, {"error": f"stand-in {status}", "code": 16,
                                "message": f"stand-in answer {status}"}
        if path == f"{API}/healthz":
            return 200, {"commit_sha": "standin", "tag_name": "2.5.0",
                         "multi_user": self.multi_user}
        if path == f"{API}/experiments" and method == "GET":
            namespace = query.get("namespace", "")
            if self.multi_user and namespace not in self.namespaces:
                return 404, {"error": f"Namespace '{namespace}' not found", "code": 5,
                             "message": f"Namespace '{namespace}' not found"}
            wanted = json.loads(query.get("filter", "{}")).get("predicates", [{}])[0]
            found = [e for e in self.experiments
                     if e["display_name"] == wanted.get("stringValue")]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if path == f"{API}/experiments" and method == "POST":
            return 200, {"experiment_id": "exp-new", **body}
        if path == f"{API}/runs" and method == "POST":
            return 200, {"run_id": RUN_ID, "display_name": body["display_name"],
                         "experiment_id": body["experiment_id"], "state": "PENDING"}
        if path == f"{API}/runs/{RUN_ID}":
            answer = self.runs[min(self.polls, len(self.runs) - 1)]
            self.polls += 1
            return 200, answer
        if path.startswith(f"{API}/artifacts/"):
            artifact = path.rsplit("/", 1)[1]
            return 200, {"artifact_id": artifact, "uri": f"minio://mlpipeline/v2/{artifact}",
                         "download_url": f"{self.url}/signed/{artifact}?X-Amz-Signature=ab12"}
        if path.startswith("/signed/"):
            return 200, REPORT_BYTES[path.rsplit("/", 1)[1]]
        return 404, {"error": "no such path", "code": 5, "message": "no such path"}

    def find(self, method, path):
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


@pytest.fixture
def standin():
    servers = []

    def start(**kwargs):
        servers.append(StandIn(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """kfp.Client reads (and may write) ~/.config/kfp/context.json: keep it in tmp_path;
    the report folders land in tmp_path."""
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The pipeline compiled once with the default options (`--package` saves each test
    the compile)."""
    out = str(tmp_path_factory.mktemp("package") / "rslad.yaml")
    assert run_cli(rp.main, ["compile", "--out", out]) == 0
    return out


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # what `kubectl create token ... > token` writes
    return str(path)


def _compiled(tmp_path, name, *options):
    out = str(tmp_path / name)
    assert run_cli(rp.main, ["compile", "--out", out, *options]) == 0
    with open(out) as f:
        return load_yaml(f)


def assert_token_only_in_authorization(server, *outputs):
    """The token is in the Authorization header of API requests and nowhere else: not in
    a URL, a body, another header, a download request or the command's output."""
    assert server.requests
    for request in server.requests:
        api = request["path"].startswith(API)
        if api:
            assert request["headers"].get("authorization") == f"Bearer {TOKEN}", request["path"]
        else:  # the signed download URL: no credentials of ours
            assert "authorization" not in request["headers"], request["path"]
        without_auth = "\n".join(line for line in request["raw"].splitlines()
                                 if not line.lower().startswith("authorization:"))
        assert TOKEN not in without_auth, request["path"]
    for text in outputs:
        assert TOKEN not in text


# -- the happy path --------------------------------------------------------------------
def test_submit_sends_the_compiled_spec_typed_params_and_names(tmp_path, standin, token_file,
                                                               package, capsys):
    server = standin(multi_user=True)
    options = ["--image", "registry.example/rslad-tf:7", "--parallelism", "2"]
    written = _compiled(tmp_path, "rslad.yaml", *options)
    capsys.readouterr()
    argv = ["submit", "--host", server.url, "--namespace", "team-a", "--token-file", token_file,
            "--experiment", "paper-table", "--run-name", "cifar10-rslad-1", *options,
            "--param", "dataset=cifar10", "--param", "epochs=3", "--param", "epsilon=0.031",
            "--param", "methods=sat,rslad", "--param", "download=true",
            "--param", 'autoattack_options={"n_queries": 10}',
            "--param", "teacher_sha256=0123456789", "--param", 'whitebox_attacks=["clean"]']
    assert run_cli(rp.main, argv) == 0
    out, err = capsys.readouterr()

    (created,) = server.find("POST", f"{API}/runs")
    body = created["json"]
    # The API takes the spec as a JSON object, not the YAML bytes: kfp.Client parses the
    # YAML into the PipelineSpec protobuf and sends its JSON form. `compile` writes that
    # same JSON form as YAML, so the parsed YAML and the sent JSON must be one document;
    # comparing canonical JSON texts checks every key, value and JSON type.
    assert canonical(body["pipeline_spec"]) == canonical(written)
    # ... and the comparison tells pipelines apart: other compile options differ.
    with open(package) as f:
        assert canonical(body["pipeline_spec"]) != canonical(load_yaml(f))
    # The parameters as typed: integers, floats, booleans and lists keep their JSON type;
    # string parameters stay verbatim strings, even when they look like JSON or numbers.
    assert canonical(body["runtime_config"]["parameters"]) == canonical({
        "dataset": "cifar10", "epochs": 3, "epsilon": 0.031, "methods": ["sat", "rslad"],
        "download": True, "autoattack_options": '{"n_queries": 10}',
        "teacher_sha256": "0123456789", "whitebox_attacks": '["clean"]'})
    assert body["display_name"] == "cifar10-rslad-1"
    assert body["experiment_id"] == "exp-new"
    # The experiment was looked up by name in the namespace, then created there.
    (listed,) = server.find("GET", f"{API}/experiments")
    assert listed["query"]["namespace"] == "team-a"
    predicate = json.loads(listed["query"]["filter"])["predicates"][0]
    assert (predicate["key"], predicate["stringValue"]) == ("display_name", "paper-table")
    (made,) = server.find("POST", f"{API}/experiments")
    assert made["json"] == {"display_name": "paper-table", "namespace": "team-a"}
    assert f"run id: {RUN_ID}" in out.splitlines()
    assert f"run URL: {server.url}/#/runs/details/{RUN_ID}" in out.splitlines()
    assert err == ""
    assert_token_only_in_authorization(server, out, err)


def test_submit_reuses_an_experiment_and_sends_no_token_when_none_given(standin, package,
                                                                        capsys):
    server = standin(experiments=[{"experiment_id": "exp-old", "display_name": "rslad-tf"}])
    assert run_cli(rp.main, ["submit", "--host", server.url + "/", "--package", package]) == 0
    assert not server.find("POST", f"{API}/experiments")
    (created,) = server.find("POST", f"{API}/runs")
    assert created["json"]["experiment_id"] == "exp-old"
    assert created["json"]["runtime_config"] == {"parameters": {}}
    assert created["json"]["display_name"].startswith("rslad-tf-")
    assert all("authorization" not in r["headers"] for r in server.requests)
    assert f"run id: {RUN_ID}" in capsys.readouterr().out


# -- errors of the server: one line, exit 2 ---------------------------------------------
SERVER_ERRORS = {
    "401": (dict(fail={("GET", f"{API}/healthz"): 401}),
            ["401", "token was rejected", "make a new one"]),
    "403": (dict(multi_user=True, fail={("POST", f"{API}/runs"): 403}),
            ["403", "may not use namespace 'team-a'"]),
    "404-namespace": (dict(multi_user=True, namespaces=("team-b",)),
                      ["404", "Namespace 'team-a' not found",
                       "namespace 'team-a' is unknown to the cluster"]),
    "500": (dict(fail={("POST", f"{API}/runs"): 500}), ["500", "creating the run",
                                                        "KFP API server failed"]),
}


def _check_error_line(lines, case, server, *outputs):
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for text in SERVER_ERRORS[case][1]:
        assert text in lines[0], lines[0]
    assert_token_only_in_authorization(server, *outputs)


@pytest.mark.parametrize("case", sorted(SERVER_ERRORS))
def test_server_errors_give_one_line_and_exit_2(case, standin, token_file, package, capsys):
    server = standin(**SERVER_ERRORS[case][0])
    assert run_cli(rp.main, ["submit", "--host", server.url, "--namespace", "team-a",
                             "--token-file", token_file, "--package", package]) == 2
    out, err = capsys.readouterr()
    _check_error_line(err.splitlines(), case, server, out, err)
    assert RUN_ID not in out


# `python -m pipelines.rslad_pipeline ...` that also says, on its last stdout line, whether
# TensorFlow was imported (its C++ start-up lines would go to stderr).
RUN_AS_MAIN = ("import runpy, sys\n"
               "try:\n"
               "    runpy.run_module('pipelines.rslad_pipeline', run_name='__main__',"
               " alter_sys=True)\n"
               "finally:\n"
               "    print('tensorflow imported:', 'tensorflow' in sys.modules)\n")


@pytest.mark.parametrize("case", ["401", "404-namespace"])
def test_server_errors_in_a_subprocess(case, standin, token_file, package, tmp_path):
    """What a user sees on stderr: one line, no warnings of kfp, no traceback, no retries;
    and the submit path does not import TensorFlow."""
    server = standin(**SERVER_ERRORS[case][0])
    env = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=ROOT)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RUN_AS_MAIN, "submit",
                           "--host", server.url, "--namespace", "team-a",
                           "--token-file", token_file, "--package", package],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    _check_error_line([ln for ln in proc.stderr.splitlines() if ln.strip()], case, server,
                      proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and RUN_ID not in proc.stdout
    assert proc.stdout.splitlines()[-1] == "tensorflow imported: False"
    assert time.monotonic() - started < 30


def test_login_redirect_and_multi_user_without_namespace(standin, package, capsys):
    server = standin(fail={("GET", f"{API}/healthz"): 302})
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package]) == 2
    err = capsys.readouterr().err
    assert "302" in err and "login page" in err and "--token-file" in err
    assert len(server.requests) == 1  # the redirect was not followed
    server = standin(multi_user=True)
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package]) == 2
    assert "is multi-user: pass --namespace" in capsys.readouterr().err
    assert [r["path"] for r in server.requests] == [f"{API}/healthz"]


# -- refused locally, before any request -----------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--param", "epoch=3"], "unknown pipeline parameter; did you mean 'epochs'?"),
    (["--param", "epochs=3.5"], "epochs is an integer"),
    (["--param", "epsilon=eight"], "epsilon is a float"),
    (["--param", "download=yes"], "download is a boolean (true or false)"),
    (["--param", "methods=[\"sat\""], "methods is a list (a JSON list)"),
    (["--param", "methods=sat,kd"], "unknown method 'kd'"),
    (["--param", "epochs=3", "--param", "epochs=4"], "given twice"),
    (["--token-file", "missing-token"], "--token-file 'missing-token'"),
    (["--token-env", "RSLAD_TEST_NO_SUCH_TOKEN"], "unset or empty"),
    (["--token-env", "X", "--token-file", "y"], "not allowed with argument"),
    (["--wait", "--poll-interval", "0"], "--poll-interval must be positive"),
])
def test_bad_input_is_refused_before_anything_is_sent(args, message, standin, package,
                                                     capsys):
    server = standin()
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package,
                             *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert server.requests == []


def test_dry_run_sends_nothing_and_hides_the_token(standin, package, monkeypatch, capsys):
    server = standin()
    monkeypatch.setenv("KFP_TOKEN_FOR_TEST", TOKEN)
    assert run_cli(rp.main, ["submit", "--host", server.url, "--dry-run", "--package", package,
                             "--namespace", "ns1",
                             "--token-env", "KFP_TOKEN_FOR_TEST", "--param", "epochs=2",
                             "--param", "methods=[\"rslad\"]", "--run-name", "try"]) == 0
    out = capsys.readouterr().out
    assert server.requests == []
    assert TOKEN not in out
    assert "<token from --token-env KFP_TOKEN_FOR_TEST, not shown>" in out
    assert '"epochs": 2' in out and '"methods": ["rslad"]' in out
    assert "display_name: try" in out and "'ns1'" in out


def test_occupied_report_dir_is_refused_before_submitting(tmp_path, standin, package, capsys):
    server = standin()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "report.md").write_text("earlier")
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package, "--wait",
                             "--report-dir", "keep"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert server.requests == []
    assert (tmp_path / "keep" / "report.md").read_text() == "earlier"


# -- following the run -----------------------------------------------------------------
def test_wait_prints_task_changes_and_downloads_the_report(tmp_path, standin, token_file,
                                                           package, capsys):
    server = standin(multi_user=True)
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package,
                             "--namespace", "team-a",
                             "--token-file", token_file, "--wait", "--poll-interval", "0.01",
                             "--report-dir", "out"]) == 0
    out, err = capsys.readouterr()
    changes = [line.split("] ", 1)[1] for line in out.splitlines() if line.startswith("[")]
    assert changes == [
        f"run {RUN_ID}: PENDING",
        "prepare-data: RUNNING", f"run {RUN_ID}: RUNNING",
        "prepare-data: SUCCEEDED", "distill-student: RUNNING", "distill-student #2: RUNNING",
        "distill-student: SUCCEEDED", "distill-student #2: FAILED", "make-report: SUCCEEDED",
        f"run {RUN_ID}: SUCCEEDED"]
    assert server.polls == len(SUCCESS)
    for output, name in (("a-report", "report.md"), ("a-table", "table.json"),
                         ("a-plot", "clean_vs_aa.png")):
        assert (tmp_path / "out" / name).read_bytes() == REPORT_BYTES[output]
        (lookup,) = server.find("GET", f"{API}/artifacts/{output}")
        assert lookup["query"] == {"view": "DOWNLOAD"}
    assert f"report: {os.path.join('out', 'report.md')}" in out
    assert "| rslad | 50.1 |" in out  # the table is shown too
    assert err == ""
    assert_token_only_in_authorization(server, out, err)


def test_wait_on_a_failed_run_and_a_timeout(tmp_path, standin, package, capsys):
    failed = [run_answer("RUNNING", [task("t1", "train-teacher", "RUNNING")]),
              run_answer("FAILED", [task("t1", "train-teacher", "FAILED")],
                         error="train-teacher: OOMKilled")]
    server = standin(runs=failed)
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package, "--wait",
                             "--poll-interval", "0.01", "--report-dir", "failed"]) == 2
    out, err = capsys.readouterr()
    assert "train-teacher: FAILED" in out
    assert err.strip() == (f"error: run {RUN_ID} ended FAILED: train-teacher: OOMKilled; see "
                           f"{server.url}/#/runs/details/{RUN_ID} for the failed step's log")
    assert not (tmp_path / "failed").exists() or not os.listdir(tmp_path / "failed")

    server = standin(runs=[run_answer("RUNNING")], max_requests=200)
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package, "--wait",
                             "--poll-interval", "0.01", "--wait-timeout", "0.2"]) == 2
    err = capsys.readouterr().err
    assert f"run {RUN_ID} is still RUNNING after 0.2 s" in err and "follow --run-id" in err


def test_follow_waits_out_a_restarting_server_but_not_a_rejected_token(standin, package,
                                                                        capsys):
    runs = f"{API}/runs/{RUN_ID}"
    server = standin(runs=SUCCESS[-1:], flaky={("GET", runs): [503, 503]})
    assert run_cli(rp.main, ["follow", "--host", server.url, "--run-id", RUN_ID,
                             "--package", package, "--poll-interval", "0.01"]) == 0
    assert len(server.find("GET", runs)) == 3
    assert f"run {RUN_ID}: SUCCEEDED" in capsys.readouterr().out
    server = standin(runs=SUCCESS[-1:], fail={("GET", runs): 401})
    assert run_cli(rp.main, ["follow", "--host", server.url, "--run-id", RUN_ID,
                             "--package", package, "--poll-interval", "0.01",
                             "--report-dir", "second"]) == 2
    assert len(server.find("GET", runs)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: following run {RUN_ID} at {server.url} failed (401")


def test_no_api_at_the_host_and_no_artifact_endpoint(standin, package, capsys):
    server = standin(fail={("GET", f"{API}/healthz"): 404})
    assert run_cli(rp.main, ["submit", "--host", server.url, "--package", package]) == 2
    assert "no Kubeflow Pipelines API there: check --host" in capsys.readouterr().err
    server = standin(runs=SUCCESS[-1:], fail={("GET", f"{API}/artifacts/"): 404})
    assert run_cli(rp.main, ["follow", "--host", server.url, "--run-id", RUN_ID,
                             "--package", package, "--poll-interval", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: looking up artifact a-plot (plot) at ")
    assert "no artifact endpoint" in err and "run's page" in err


def test_follow_an_existing_run(tmp_path, standin, token_file, package, capsys):
    server = standin(runs=SUCCESS[-1:])
    assert run_cli(rp.main, ["follow", "--host", server.url, "--run-id", RUN_ID,
                             "--package", package,
                             "--token-file", token_file, "--poll-interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert f"run {RUN_ID}: SUCCEEDED" in out
    report = tmp_path / "cluster_runs" / RUN_ID / "report.md"
    assert report.read_bytes() == REPORT_BYTES["a-report"]
    assert not server.find("POST", f"{API}/runs")
    assert_token_only_in_authorization(server, out)


# -- parameters a user can discover ----------------------------------------------------
def test_params_lists_every_parameter_with_type_and_default(package, capsys):
    with open(package) as f:
        spec = load_yaml(f)
    capsys.readouterr()
    assert run_cli(rp.main, ["params", "--package", package]) == 0
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in
            capsys.readouterr().out.splitlines()[2:]}
    declared = spec["root"]["inputDefinitions"]["parameters"]
    signature = inspect.signature(rp.make_pipeline().pipeline_func).parameters
    assert set(rows) == set(declared) == set(signature)
    kinds = {"STRING": "string", "NUMBER_INTEGER": "integer", "NUMBER_DOUBLE": "float",
             "BOOLEAN": "boolean", "LIST": "list"}
    for name, (kind, default) in rows.items():
        assert kind == kinds[declared[name]["parameterType"]], name
        assert json.loads(default) == signature[name].default, name  # the Python default
    assert rows["surrogate_seed"] == ["integer", "1"]  # not kfp's stored 1.0
    # The same table ends `submit --help`.
    assert run_cli(rp.main, ["submit", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--token-file" in help_text and "--dry-run" in help_text
    assert "  methods " in help_text and "  epsilon " in help_text
