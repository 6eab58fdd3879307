"""Reference AutoAttack and Square on a ``.keras`` file, through Keras' torch backend.

AutoAttack (Croce & Hein, ICML 2020) is the paper's strongest white-box column: the
standard version runs APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes) and
Square (5000 queries) in turn, each on the points still robust, and a point counts as
robust only if it survives all four. Threat model: L-infinity, ``||x_adv - x|| <= eps``,
images in [0,1]. Square (Andriushchenko et al., ECCV 2020) alone is the paper's black-box,
query-based column.

The attack code is the reference implementation (the ``pyautoattack`` package), which
only runs on PyTorch modules. Keras 3 loads our backend-agnostic ``.keras`` files under its
torch backend as ``torch.nn.Module``s with the same weights, but the backend is fixed when
Keras is imported, so the attack runs in a child process:

    parent (TensorFlow)                 child (KERAS_BACKEND=torch, no TensorFlow)
    run(model_path, x, y, ...)  --npz-> load the .keras file, wrap NCHW -> NHWC,
                                        run the attacks one after the other,
                                <-npz-- adversarial images, per-attack robust flags

The child runs each of the version's attacks with ``run_standard_evaluation`` on exactly the
points still robust (in index order, same batch size, same seed), which is what one call
with all attacks does internally; doing it one attack at a time lets us record the robust
flags after each attack. The parent then re-classifies the returned images with its own
model (``rslad_tf.evaluation.suite`` does this) so the reported number is the TensorFlow model's.

This module imports neither TensorFlow nor PyTorch at the top: the parent side needs only
numpy. The child is started as ``python <this file>`` with the repository root on
``PYTHONPATH``, so that importing the ``rslad_tf.attacks`` package (which imports
TensorFlow) is avoided; ``python -m rslad_tf.attacks.autoattack.reference IN.npz OUT.npz``
works as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

# The attacks pyautoattack knows (its custom version); the request check is shared with
# the native implementation (`rslad_tf.attacks.autoattack.request`).
KNOWN_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
PREFIX = "[autoattack] "
# The npz key prefix of the hyper-parameter overrides sent to the child (-1: not set).
OPTION_PREFIX = "opt_"


class ReferenceAttackError(RuntimeError):
    """The child process failed; the message holds the tail of its error output."""


# --------------------------------------------------------------------------------------
# Parent side (no TensorFlow, no PyTorch needed)
# --------------------------------------------------------------------------------------
def _package_root() -> str:
    # The folder that holds the `rslad_tf` package: <root>/rslad_tf/attacks/autoattack/reference.py
    here = os.path.abspath(__file__)
    for _ in range(4):
        here = os.path.dirname(here)
    return here


def default_threads() -> int:
    """Torch CPU threads of the child: ``RSLAD_TF_THREADS`` if set, else one thread on
    machines with two cores or fewer (0 = torch's own default elsewhere). On a small shared
    machine torch's spinning thread pool made the small-batch attack loops (Square: one
    tiny forward pass per query) about 7x slower than one thread (measured: 17.8 s against
    2.4 s for 300 Square queries on a busy 2-core machine)."""
    if os.environ.get("RSLAD_TF_THREADS"):
        return int(os.environ["RSLAD_TF_THREADS"])
    return 1 if (os.cpu_count() or 1) <= 2 else 0


def run(model_path: str, x: np.ndarray, y: np.ndarray, *, eps: float,
        version: str = "standard", attacks=None, seed: int = 0, batch_size: int = 250,
        options: dict | None = None, device: str | None = None, threads: int | None = None,
        timeout: float | None = None, log=None) -> dict:
    """Run reference AutoAttack (or a custom subset, e.g. ``["square"]``) in a child process.

    Args:
        model_path: a ``.keras`` file holding a backend-agnostic model (images -> logits).
        x: float32 images [N, H, W, C] in [0,1]; y: int labels [N].
        eps: L-infinity radius.
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square-5000) or "custom" (``attacks``).
        attacks: the attacks of a "custom" run, in order (names of ``pyautoattack``).
        seed, batch_size: passed to AutoAttack; recorded by the caller.
        options: overrides of reference hyper-parameters (``request.OPTION_KEYS``), tests
            only.
        device: torch device ("cpu", "cuda"); default cuda when available.
        threads: torch CPU threads in the child (default: ``RSLAD_TF_THREADS`` or torch's).
        log: a callable receiving progress lines of the child.

    Returns a dict: ``x_adv`` [N,H,W,C] float32, ``robust`` [N] bool (AutoAttack's own final
    flags: correct on the clean point and not broken by any attack), ``per_attack``
    {attack: [N] bool flags after that attack}, ``attacks`` (the order run),
    ``clean_logits`` [N,K] (torch backend), ``seconds`` {attack: s}, ``device``,
    ``versions`` (pyautoattack, torch, keras), ``tensorflow_imported`` (must be False).
    """
    # Imported here, not at the top: the child runs this file as a script, where importing
    # the rslad_tf.attacks package would import TensorFlow.
    from rslad_tf.attacks.autoattack.request import OPTION_KEYS, check_request

    version = str(version)
    check_request(version, attacks, options, KNOWN_ATTACKS)
    options = dict(options or {})
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"model file {model_path!r} does not exist")
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"expected images [N,H,W,C] and N labels, got {x.shape} and {y.shape}")
    if threads is None:
        threads = default_threads()

    with tempfile.TemporaryDirectory(prefix="rslad_tf-aa-") as tmp:
        in_path = os.path.join(tmp, "in.npz")
        out_path = os.path.join(tmp, "out.npz")
        err_path = os.path.join(tmp, "stderr.txt")
        arrays = {
            "model_path": np.array(os.path.abspath(model_path)),
            "x": x, "y": y, "eps": np.array(float(eps), np.float64),
            "version": np.array(version), "attacks": np.array(",".join(attacks or [])),
            "seed": np.array(int(seed), np.int64),
            "batch_size": np.array(int(batch_size), np.int64),
            "device": np.array(device or ""), "threads": np.array(int(threads or 0), np.int64),
        }
        for key in OPTION_KEYS:
            arrays[OPTION_PREFIX + key] = np.array(int(options.get(key, -1)), np.int64)
        with open(in_path, "wb") as f:
            np.savez(f, **arrays)

        env = dict(os.environ)
        env["KERAS_BACKEND"] = "torch"
        env["PYTHONPATH"] = os.pathsep.join(
            [_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        command = [sys.executable, os.path.abspath(__file__), in_path, out_path]
        started = time.time()
        with open(err_path, "w+") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env,
                                    text=True, bufsize=1)
            try:
                for line in proc.stdout:
                    line = line.rstrip("\n")
                    if log is not None and line.startswith(PREFIX):
                        log(line)
                rc = proc.wait(timeout=None if timeout is None
                               else max(1.0, timeout - (time.time() - started)))
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            err.seek(0)
            stderr = err.read()
        if rc != 0 or not os.path.exists(out_path):
            tail = "\n".join(stderr.strip().splitlines()[-15:])
            raise ReferenceAttackError(
                f"reference AutoAttack child process failed (exit {rc}):\n{tail}")
        with np.load(out_path, allow_pickle=False) as out:
            names = [str(n) for n in out["attack_names"]] if out["attack_names"].size else []
            flags = out["per_attack_flags"]
            result = {
                "x_adv": out["x_adv"],
                "robust": out["robust"].astype(bool),
                "clean_logits": out["clean_logits"],
                "attacks": names,
                "per_attack": {n: flags[i].astype(bool) for i, n in enumerate(names)},
                "seconds": {n: float(out["attack_seconds"][i]) for i, n in enumerate(names)},
                "device": str(out["device"]),
                "versions": {"pyautoattack": str(out["pyautoattack_version"]),
                             "torch": str(out["torch_version"]),
                             "keras": str(out["keras_version"])},
                "keras_backend": str(out["keras_backend"]),
                "tensorflow_imported": bool(out["tensorflow_imported"]),
                "wall_seconds": time.time() - started,
            }
    return result


# --------------------------------------------------------------------------------------
# Child side (KERAS_BACKEND=torch)
# --------------------------------------------------------------------------------------
def _say(message: str) -> None:
    print(PREFIX + message, flush=True)


def _child(in_path: str, out_path: str) -> None:
    if os.environ.get("KERAS_BACKEND") != "torch":
        raise RuntimeError("the reference AutoAttack child must run with KERAS_BACKEND=torch")
    with np.load(in_path, allow_pickle=False) as inp:
        args = {k: inp[k] for k in inp.files}
    threads = int(args["threads"])

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # already set in this process
    import keras

    if keras.backend.backend() != "torch":
        raise RuntimeError(f"Keras runs on {keras.backend.backend()!r}, not torch")
    import pyautoattack
    from pyautoattack import AutoAttack

    import rslad_tf.models  # noqa: F401 - registers the custom model classes for loading

    model = keras.saving.load_model(str(args["model_path"]), compile=False, safe_mode=True)
    device = str(args["device"]) or ("cuda" if torch.cuda.is_available() else "cpu")

    class ChannelsFirst(torch.nn.Module):
        """pyautoattack assumes NCHW images (Square reads channels on axis 1); our models
        take NHWC. Inference mode always (BatchNorm uses its moving statistics)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            logits = self.inner(images.permute(0, 2, 3, 1), training=False)
            return logits.float()

    net = ChannelsFirst(model)
    net.eval()
    x_nhwc = torch.from_numpy(args["x"]).to(device)
    x = x_nhwc.permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(args["y"]).long().to(device)
    eps = float(args["eps"])
    version = str(args["version"])
    batch_size = int(args["batch_size"])
    seed = int(args["seed"])

    def predict(images):
        outs = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                outs.append(net(images[i:i + batch_size]).detach())
        return torch.cat(outs)

    clean_logits = predict(x)
    robust = clean_logits.argmax(1) == y

    chosen = [a for a in str(args["attacks"]).split(",") if a]
    if version == "standard":
        adversary = AutoAttack(net, norm="Linf", eps=eps, version="standard", device=device,
                               seed=seed)
    else:
        adversary = AutoAttack(net, norm="Linf", eps=eps, version="custom", device=device,
                               seed=seed, attacks=chosen)
    adversary.logger.setLevel("WARNING")  # its DEBUG progress lines: we log our own
    order = list(adversary.attacks_to_run)
    _apply_options(adversary, {k[len(OPTION_PREFIX):]: int(v) for k, v in args.items()
                               if k.startswith(OPTION_PREFIX) and int(v) >= 0})

    x_adv = x.clone()
    per_attack, seconds = [], []
    n = len(y)
    _say(f"{version} version, attacks {', '.join(order)}; eps {eps:.5g}, {n} points, "
         f"device {device}; clean accuracy {100.0 * robust.float().mean().item():.2f}%")
    for name in order:
        started = time.time()
        idx = torch.nonzero(robust, as_tuple=False).flatten()
        if len(idx) > 0:
            adversary.attacks_to_run = [name]
            adv_sub, pred_sub = adversary.run_standard_evaluation(
                x[idx], y[idx], batch_size=batch_size)
            broken = pred_sub.to(device) != y[idx]
            x_adv[idx[broken]] = adv_sub.to(device)[broken]
            robust[idx[broken]] = False
        per_attack.append(robust.clone())
        seconds.append(time.time() - started)
        _say(f"robust accuracy after {name}: {100.0 * robust.float().mean().item():.2f}% "
             f"({seconds[-1]:.1f} s)")

    arrays = {
        "x_adv": x_adv.permute(0, 2, 3, 1).contiguous().cpu().numpy().astype(np.float32),
        "robust": robust.cpu().numpy(),
        "clean_logits": clean_logits.cpu().numpy().astype(np.float32),
        "attack_names": np.array(order),
        "per_attack_flags": (torch.stack(per_attack).cpu().numpy() if per_attack
                             else np.zeros([0, n], bool)),
        "attack_seconds": np.array(seconds, np.float64),
        "device": np.array(device),
        "pyautoattack_version": np.array(getattr(pyautoattack, "__version__", "unknown")),
        "torch_version": np.array(torch.__version__),
        "keras_version": np.array(keras.__version__),
        "keras_backend": np.array(keras.backend.backend()),
        "tensorflow_imported": np.array("tensorflow" in sys.modules),
    }
    tmp = out_path + ".part"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, out_path)


def _apply_options(adversary, options: dict) -> None:
    """Override reference hyper-parameters (fast tests only)."""
    if "n_iter" in options:
        for attack in (adversary.apgd, adversary.apgd_targeted):
            n_iter = options["n_iter"]
            attack.n_iter = attack.n_iter_orig = n_iter
            # APGD derives its step-size checkpoints from n_iter in its constructor.
            attack.n_iter_2 = max(int(0.22 * n_iter), 1)
            attack.n_iter_min = max(int(0.06 * n_iter), 1)
            attack.size_decr = max(int(0.03 * n_iter), 1)
        adversary.fab.n_iter = options["n_iter"]
    if "n_restarts" in options:
        adversary.apgd.n_restarts = options["n_restarts"]
        adversary.apgd_targeted.n_restarts = options["n_restarts"]
        adversary.fab.n_restarts = options["n_restarts"]
    if "n_queries" in options:
        adversary.square.n_queries = options["n_queries"]
    if "n_target_classes" in options:
        adversary.apgd_targeted.n_target_classes = options["n_target_classes"]
        adversary.fab.n_target_classes = options["n_target_classes"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: KERAS_BACKEND=torch python -m rslad_tf.attacks.autoattack.reference "
              "IN.npz OUT.npz", file=sys.stderr)
        return 2
    _child(argv[0], argv[1])
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        # Started as a file: do not let this folder shadow top-level modules.
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.exit(main())
