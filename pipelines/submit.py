"""Submitting a compiled pipeline to a Kubeflow Pipelines cluster, following the run and
fetching its report.

The KFP v2beta1 REST API, as this module uses it:

- ``GET /apis/v2beta1/healthz``: one quick check (timeout, no retries) so that a wrong
  host, a login page or a rejected token fails in seconds with one line (kfp.Client's own
  check retries five times, five seconds apart, and logs tracebacks).
- ``GET/POST /apis/v2beta1/experiments`` and ``POST /apis/v2beta1/runs``, ``GET
  /apis/v2beta1/runs/{id}``: through ``kfp.Client`` (its ``existing_token`` is sent as
  ``Authorization: Bearer``), so the request bodies are the SDK's own: the pipeline spec
  inline, the parameters in ``runtime_config.parameters``.
- ``GET /apis/v2beta1/artifacts/{id}?view=DOWNLOAD`` (not in kfp_server_api 2.17.3): the
  signed download URL of each output artifact of the report step; the file itself comes
  from that URL, sent without the token (it carries its own signature and may be another
  host, the object store).

The token is read from a file or an environment variable, never from the command line
(visible in ``ps``), and never printed: it goes into the Authorization header only.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings

from rslad_tf.common.errors import UserError

HEALTH_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
FINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
# Local names of the report step's outputs (same as `run-local` writes).
OUTPUT_FILES = {"report": "report.md", "table": "table.json", "plot": "clean_vs_aa.png"}
# Consecutive failed polls tolerated while following a run (a restarting API pod).
POLL_RETRIES = 3


# -- the token -------------------------------------------------------------------------
def read_token(token_file: str | None = None, token_env: str | None = None) -> str | None:
    """The bearer token from ``token_file`` or the environment variable ``token_env``
    (surrounding whitespace stripped); None when neither is given."""
    if token_file:
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            raise UserError(f"--token-file {token_file!r}: {exc.strerror}; write the token "
                            "there, e.g. `kubectl -n NAMESPACE create token default-editor "
                            "> FILE`") from None
        source = f"--token-file {token_file!r}"
    elif token_env:
        token = os.environ.get(token_env, "").strip()
        source = f"--token-env {token_env}"
        if not token:
            raise UserError(f"--token-env {token_env}: the environment variable is unset or "
                            f"empty; export {token_env}=<token> first")
    else:
        return None
    if not token:
        raise UserError(f"{source}: the file is empty; write the token there")
    if any(c.isspace() for c in token):
        raise UserError(f"{source}: the token contains whitespace; it should be one word "
                        "(a JWT or access token)")
    return token


# -- errors of the API -----------------------------------------------------------------
def _server_message(body) -> str:
    """The first line of the server's error message (KFP answers {"error", "message"})."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = body or ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        data = json.loads(text)
        text = data.get("message") or data.get("error") or ""
    text = str(text).strip()
    return text.splitlines()[0][:200] if text else ""


def api_error(status: int, reason: str, body, *, doing: str, host: str,
              namespace: str | None, token: str | None, missing: str | None = None) -> UserError:
    """One line for an HTTP error answer of the KFP API: what failed, the status, the
    server's message and what to do (``missing``: the advice for a 404)."""
    message = _server_message(body)
    if token and message:
        message = message.replace(token, "<token>")
    code = f"{status} {reason or ''}".strip() + (f": {message}" if message else "")
    if 300 <= status < 400:
        fix = ("the API redirected (to a login page?): pass a bearer token with --token-file "
               "or --token-env, or use a port-forward to ml-pipeline-ui")
    elif status == 401:
        fix = ("the token was rejected (expired?); make a new one, e.g. `kubectl -n NAMESPACE "
               "create token default-editor`" if token else
               "the cluster needs a bearer token: pass it with --token-file or --token-env")
    elif status == 403:
        fix = (f"the token's user may not use namespace {namespace!r}: check --namespace and "
               "that the user is an owner or contributor of that profile" if namespace else
               "pass --namespace (your Kubeflow profile's namespace) and a token of a user "
               "allowed in it")
    elif status == 404:
        fix = missing or "the cluster does not know it; check --host and --namespace"
    elif status >= 500:
        fix = ("the KFP API server failed; try again, or read its log (`kubectl -n kubeflow "
               "logs deploy/ml-pipeline`)")
    else:
        fix = "check the options of the request"
    return UserError(f"{doing} at {host} failed ({code}); {fix}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect of an API request is an answer (usually a login page): never follow it
    # carrying the token to another place.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Api:
    """Plain JSON GETs against the KFP API at ``host`` (what kfp.Client lacks or does with
    retries): the health check and the artifact lookups."""

    def __init__(self, host: str, token: str | None = None, namespace: str | None = None):
        parsed = urllib.parse.urlparse(host)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"--host {host!r} is not an http(s) URL, e.g. "
                            "http://localhost:8080")
        self.host = host.rstrip("/")
        self.token = token
        self.namespace = namespace
        self._opener = urllib.request.build_opener(_NoRedirect)

    def error(self, exc, doing: str, missing: str | None = None) -> UserError:
        """`api_error` for a kfp_server_api.ApiException or urllib HTTPError."""
        status = getattr(exc, "status", None) or getattr(exc, "code", 0)
        body = getattr(exc, "body", None)
        if body is None and hasattr(exc, "read"):
            with contextlib.suppress(Exception):
                body = exc.read()
        return api_error(int(status or 0), getattr(exc, "reason", ""), body, doing=doing,
                         host=self.host, namespace=self.namespace, token=self.token,
                         missing=missing)

    def get_json(self, path: str, query: dict | None = None, *, doing: str,
                 missing: str | None = None, timeout: float = REQUEST_TIMEOUT_S) -> dict:
        url = self.host + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            with self._opener.open(urllib.request.Request(url, headers=headers),
                                   timeout=timeout) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            raise self.error(exc, doing, missing) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"cannot reach the Kubeflow Pipelines API at {self.host} "
                            f"({reason}); check --host (e.g. `kubectl port-forward -n "
                            "kubeflow svc/ml-pipeline-ui 8080:80` then --host "
                            "http://localhost:8080)") from None
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise UserError(f"{doing} at {self.host}: the answer is not the KFP API's JSON "
                            "(a login page or a proxy?); check --host, or pass a token with "
                            "--token-file or --token-env")
        return data


def check_health(api: Api) -> dict:
    """The healthz answer; refuses a multi-user cluster without ``--namespace``."""
    health = api.get_json("/apis/v2beta1/healthz", doing="checking the KFP API",
                          missing="no Kubeflow Pipelines API there: check --host (the "
                                  "port-forwarded ml-pipeline-ui, or "
                                  "https://KUBEFLOW-HOST/pipeline)",
                          timeout=HEALTH_TIMEOUT_S)
    if health.get("multi_user") and not api.namespace:
        raise UserError(f"the Kubeflow Pipelines at {api.host} is multi-user: pass "
                        "--namespace (your Kubeflow profile's namespace)")
    return health


# -- kfp.Client ------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_client():
    """kfp.Client prints links and warns about server versions: the command prints its
    own lines instead."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _client_errors(api: Api, doing: str, missing: str | None = None):
    """Errors of kfp.Client calls as one `UserError` line (``missing``: advice for a
    404)."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise api.error(exc, doing, missing) from None
    except urllib3.exceptions.HTTPError as exc:
        raise UserError(f"{doing} at {api.host}: lost the connection "
                        f"({type(exc).__name__}); check --host and try again") from None
    except ValueError as exc:  # kfp's own checks, e.g. two experiments with one name
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid request"
        raise UserError(f"{doing} at {api.host}: {first}") from None


def make_client(api: Api):
    """A kfp.Client for ``api``'s host, token and namespace."""
    import kfp

    with _quiet_client(), _client_errors(api, "connecting"):
        if api.namespace:
            return kfp.Client(host=api.host, existing_token=api.token,
                              namespace=api.namespace)
        return kfp.Client(host=api.host, existing_token=api.token)


def run_url(host: str, run_id: str) -> str:
    """The run's page in the Kubeflow Pipelines UI (served under the API's host)."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def create_run(client, api: Api, package: str, params: dict, *, experiment: str,
               run_name: str) -> str:
    """Find or create ``experiment`` (in the namespace), create the run from the compiled
    ``package`` with ``params``; returns the run id."""
    unknown = (f"namespace {api.namespace!r} is unknown to the cluster: pass your Kubeflow "
               "profile's namespace with --namespace" if api.namespace else None)
    with _quiet_client(), _client_errors(api, f"finding or creating experiment {experiment!r}",
                                         unknown):
        found = client.create_experiment(name=experiment, namespace=api.namespace)
    with _quiet_client(), _client_errors(api, "creating the run", unknown):
        run = client.run_pipeline(experiment_id=found.experiment_id, job_name=run_name,
                                  pipeline_package_path=package, params=params)
    return run.run_id


# -- following a run -------------------------------------------------------------------
def report_outputs(spec: dict) -> dict:
    """``{output name: (producer task, its output key)}`` of the pipeline's outputs, from
    the compiled spec's root DAG."""
    outputs = {}
    for name, selector in spec["root"]["dag"].get("outputs", {}).get("artifacts", {}).items():
        first = selector["artifactSelectors"][0]
        outputs[name] = (first["producerSubtask"], first["outputArtifactKey"])
    return outputs


def _clock(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _task_labels(tasks, labels: dict) -> None:
    """Stable labels for tasks by id: the display name, numbered when several tasks (loop
    iterations) share it."""
    for task in tasks:
        if task.task_id in labels:
            continue
        name = task.display_name or task.task_id
        same = sum(1 for label in labels.values() if label.split(" #")[0] == name)
        labels[task.task_id] = f"{name} #{same + 1}" if same else name


def follow(client, api: Api, run_id: str, *, poll_interval: float, timeout: float,
           log=print):
    """Poll the run until it ends, logging every task's state when it changes; returns
    the final run. A run that does not succeed, or outlives ``timeout`` seconds, is a
    `UserError` (the run itself goes on on the cluster)."""
    import kfp_server_api
    import urllib3

    started = time.monotonic()
    states, labels, run_state, failures = {}, {}, None, 0
    doing = f"following run {run_id}"
    while True:
        try:
            with _quiet_client():
                run = client.get_run(run_id)
            failures = 0
        except (kfp_server_api.ApiException, urllib3.exceptions.HTTPError) as exc:
            # A restarting API server (5xx, refused connection) is waited out; anything
            # else (a rejected token, an unknown run) ends the wait at once.
            failures += 1
            status = getattr(exc, "status", None)
            if failures > POLL_RETRIES or (status is not None and status < 500):
                with _client_errors(api, doing, f"the cluster has no run {run_id!r} (in "
                                                "this namespace): check --run-id and "
                                                "--namespace"):
                    raise
            time.sleep(poll_interval)
            continue
        tasks = (run.run_details.task_details or []) if run.run_details else []
        _task_labels(tasks, labels)
        for task in tasks:
            state = task.state or "PENDING"
            if states.get(task.task_id) != state:
                states[task.task_id] = state
                log(f"[{_clock(started)}] {labels[task.task_id]}: {state}")
        if run.state != run_state:
            run_state = run.state
            log(f"[{_clock(started)}] run {run_id}: {run_state}")
        if run_state in FINAL_STATES:
            break
        if time.monotonic() - started > timeout:
            raise UserError(f"run {run_id} is still {run_state} after {timeout:g} s; it goes "
                            f"on on the cluster ({run_url(api.host, run_id)}): follow it "
                            "again with `follow --run-id` or a larger --wait-timeout")
        time.sleep(poll_interval)
    if run_state != "SUCCEEDED":
        why = f": {run.error.message}" if run.error and run.error.message else ""
        raise UserError(f"run {run_id} ended {run_state}{why}; see "
                        f"{run_url(api.host, run_id)} for the failed step's log")
    return run


def _download(url: str, timeout: float = REQUEST_TIMEOUT_S) -> bytes:
    # No Authorization header: a signed URL carries its own credentials.
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        where = urllib.parse.urlparse(url)
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot download the report from {where.scheme}://{where.netloc} "
                        f"({reason}); the object store must be reachable from here (e.g. "
                        "`kubectl port-forward -n kubeflow svc/minio-service 9000:9000`), or "
                        "open the run page and download it there") from None


def download_report(api: Api, run, outputs: dict, report_dir: str, *, log=print) -> dict:
    """Fetch the run's ``outputs`` (`report_outputs`) into ``report_dir``, named as
    `OUTPUT_FILES`; returns {output: local path}."""
    tasks = (run.run_details.task_details or []) if run.run_details else []
    by_name = {task.display_name: task for task in tasks}
    fetched = {}
    for output, (producer, key) in outputs.items():
        task = by_name.get(producer)
        ids = (task.outputs or {}).get(key) if task else None
        if not ids or not ids.artifact_ids:
            raise UserError(f"run {run.run_id} succeeded but lists no artifact {key!r} of "
                            f"step {producer!r}; open {run_url(api.host, run.run_id)}")
        artifact_id = ids.artifact_ids[0]
        meta = api.get_json(f"/apis/v2beta1/artifacts/{urllib.parse.quote(artifact_id)}",
                            {"view": "DOWNLOAD"},
                            doing=f"looking up artifact {artifact_id} ({output})",
                            missing="this KFP backend has no artifact endpoint (the "
                                    "v2beta1 ArtifactService) or lost the artifact; "
                                    "download the files from the run's page")
        if not meta.get("download_url"):
            raise UserError(f"the KFP API gave no download URL for {output} "
                            f"({meta.get('uri', artifact_id)}); fetch it from the object "
                            "store directly")
        fetched[output] = _download(meta["download_url"])
    if "report" in fetched:  # the table, as `run-local` shows it (the plot stays a file)
        log(fetched["report"].decode("utf-8", "replace").split("![", 1)[0].rstrip() + "\n")
    # Written only once everything is fetched: no half report.
    os.makedirs(report_dir, exist_ok=True)
    paths = {}
    for output, data in fetched.items():
        path = os.path.join(report_dir, OUTPUT_FILES.get(output, output))
        with open(path, "xb") as f:  # never overwrite
            f.write(data)
        paths[output] = path
        log(f"{output}: {path}")
    return paths


# -- what is sent ----------------------------------------------------------------------
def describe_request(api: Api, package: str, spec: dict, params: dict, *, experiment: str,
                     run_name: str, compiled_now: bool, token_source: str | None) -> str:
    """What `submit` would send, without the token."""
    with open(package, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    images = sorted({e.get("container", {}).get("image", "?")
                     for e in spec.get("deploymentSpec", {}).get("executors", {}).values()})
    where = f" in namespace {api.namespace!r}" if api.namespace else ""
    origin = "compiled now" if compiled_now else f"from {package}"
    auth = (f"Authorization: Bearer <token from {token_source}, not shown>" if token_source
            else "no Authorization header (no token given)")
    return "\n".join([
        f"dry run: nothing is sent to {api.host}",
        f"GET  {api.host}/apis/v2beta1/healthz",
        f"GET  {api.host}/apis/v2beta1/experiments: experiment {experiment!r}{where}, "
        "created (POST) when missing",
        f"POST {api.host}/apis/v2beta1/runs:",
        f"  display_name: {run_name}",
        f"  pipeline_spec: {spec.get('pipelineInfo', {}).get('name', '?')} ({origin}, "
        f"sha256 {digest[:16]}..., image {', '.join(images)})",
        f"  runtime_config.parameters: {json.dumps(params)}",
        auth,
    ])


def default_run_name() -> str:
    return f"rslad-tf-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def check_report_dir(path: str) -> None:
    """The report folder must not hold anything yet (results are never overwritten)."""
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise UserError(f"--report-dir {path!r} is not empty; choose another folder")


def positive(name: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{name} must be positive, got {value:g}")


# -- command line ----------------------------------------------------------------------
def add_help_with_parameters(parser, load_spec) -> None:
    """Give ``parser`` a ``-h/--help`` that prints the usual help and then the pipeline's
    parameter table (`parameters.describe` of ``load_spec()``); the parser must be made
    with ``add_help=False``."""
    import argparse

    from pipelines import parameters

    class HelpAction(argparse.Action):
        def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
            super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                             help="show this help and the pipeline's parameters")

        def __call__(self, parser, namespace, values, option_string=None):
            parser.print_help()
            print("\n" + parameters.describe(load_spec()))
            parser.exit()

    parser.add_argument("-h", "--help", action=HelpAction)


def add_connection_arguments(p) -> None:
    """--host, --namespace and the token options (submit and follow)."""
    p.add_argument("--host", required=True,
                   help="KFP API endpoint: http://localhost:8080 after `kubectl "
                        "port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`, or "
                        "https://KUBEFLOW-HOST/pipeline")
    p.add_argument("--namespace",
                   help="your Kubeflow profile's namespace (multi-user Kubeflow)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="FILE",
                       help="file holding a bearer token, e.g. from `kubectl -n NAMESPACE "
                            "create token default-editor` (never printed)")
    token.add_argument("--token-env", metavar="VAR",
                       help="environment variable holding a bearer token (never printed)")
    p.add_argument("--poll-interval", type=float, default=30.0, metavar="S",
                   help="seconds between two looks at the run with --wait (default 30)")
    p.add_argument("--wait-timeout", type=float, default=72 * 3600.0, metavar="S",
                   help="stop following after this many seconds (default 72 h; the run "
                        "goes on)")
    p.add_argument("--report-dir", metavar="DIR",
                   help="where the report, table and plot go when the run succeeds "
                        "(default cluster_runs/<run name or id>; must be empty)")


def add_submit_arguments(p) -> None:
    """The options of `submit` besides the compile options."""
    add_connection_arguments(p)
    p.add_argument("--package", help="a compiled pipeline YAML (default: compile now)")
    p.add_argument("--experiment", default="rslad-tf",
                   help="experiment name (found or created; default rslad-tf)")
    p.add_argument("--run-name", help="run name (default rslad-tf-<time>)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter, typed as the pipeline declares it, e.g. "
                        "dataset=cifar10, epochs=3, methods=sat,rslad (repeatable; the list "
                        "is below and in the `params` command)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be sent (without the token) and send nothing")
    p.add_argument("--wait", action="store_true",
                   help="follow the run to its end, print each step's state as it changes, "
                        "and download the report when it succeeds")


def _connect(args) -> Api:
    token = read_token(args.token_file, args.token_env)
    positive("--poll-interval", args.poll_interval)
    positive("--wait-timeout", args.wait_timeout)
    return Api(args.host, token, args.namespace)


def _token_source(args) -> str | None:
    if args.token_file:
        return f"--token-file {args.token_file}"
    return f"--token-env {args.token_env}" if args.token_env else None


def run_submit(args, package: str, spec: dict, *, compiled_now: bool, log=print) -> str:
    """`submit`: everything is checked locally (host, token, parameters, report folder)
    before the first request; returns the run id ("" for a dry run)."""
    from pipelines import parameters

    api = _connect(args)
    params = parameters.parse_params(args.param, parameters.definitions(spec))
    run_name = args.run_name or default_run_name()
    report_dir = args.report_dir or os.path.join("cluster_runs", run_name)
    if args.wait:
        check_report_dir(report_dir)
    if args.dry_run:
        log(describe_request(api, package, spec, params, experiment=args.experiment,
                             run_name=run_name, compiled_now=compiled_now,
                             token_source=_token_source(args)))
        return ""
    check_health(api)
    client = make_client(api)
    run_id = create_run(client, api, package, params, experiment=args.experiment,
                        run_name=run_name)
    where = f" (namespace {api.namespace})" if api.namespace else ""
    log(f"created run {run_id} in experiment {args.experiment!r}{where}")
    log(f"run id: {run_id}")
    log(f"run URL: {run_url(api.host, run_id)}")
    if args.wait:
        run = follow(client, api, run_id, poll_interval=args.poll_interval,
                     timeout=args.wait_timeout, log=log)
        download_report(api, run, report_outputs(spec), report_dir, log=log)
    return run_id


def run_follow(args, spec: dict, *, log=print) -> None:
    """`follow`: follow an existing run (e.g. after --wait-timeout) and fetch its report."""
    api = _connect(args)
    report_dir = args.report_dir or os.path.join("cluster_runs", args.run_id)
    check_report_dir(report_dir)
    check_health(api)
    client = make_client(api)
    log(f"run URL: {run_url(api.host, args.run_id)}")
    run = follow(client, api, args.run_id, poll_interval=args.poll_interval,
                 timeout=args.wait_timeout, log=log)
    download_report(api, run, report_outputs(spec), report_dir, log=log)
