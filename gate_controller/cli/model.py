"""`smartgate model`: model packages and the review's life cycle on a gate (docs/commissioning.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EX_FAIL = 1
EX_REFUSED = 3
EX_CONFIG = 78

_EPILOG = """\
examples:
  # at the hub (or on the technician's laptop): a signing key, then a signed package
  smartgate model keygen --private hub-model.key --public hub-model.pub
  smartgate model package inference/models/xray_anomaly.tflite --key hub-model.key \\
      --name smartgate-xray-anomaly --version 1.2.0 --out pkg-1.2.0
  smartgate model verify pkg-1.2.0 --trusted hub-model.pub

  # on the gate (inference.trusted_keys in the config names hub-model.pub)
  smartgate model install pkg-1.2.0 -c /etc/smartgate/smartgate.yaml
  smartgate model list -c /etc/smartgate/smartgate.yaml
  smartgate model activate smartgate-xray-anomaly 1.2.0 -c /etc/smartgate/smartgate.yaml
  smartgate model rollback -c /etc/smartgate/smartgate.yaml
  smartgate model report -c /etc/smartgate/smartgate.yaml      # shadow verdicts vs officers

A running daemon picks up activate/rollback within seconds (no restart) and records each step
as an event. exit status: 0 ok, 1 report bar not met / canary failed, 3 package refused, 78 config.
"""


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=Path("/etc/smartgate/smartgate.yaml"),
                        help="gate configuration (state directory, trusted keys, live bar)")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "model", help="model packages: sign, install, activate, roll back; shadow report",
        description="Build and verify signed model packages, manage the ones installed on this gate, and "
                    "report how the review did in shadow mode.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("keygen", help="new Ed25519 signing key pair")
    p.add_argument("--private", type=Path, required=True, help="private key file to create (mode 0600)")
    p.add_argument("--public", type=Path, required=True, help="public key file (goes to the gates)")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("package", help="build and sign a model package from a .tflite (metadata beside it)")
    p.add_argument("model", type=Path, help="model .tflite, or a package directory to re-sign under a new version")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    p.add_argument("--out", type=Path, required=True, help="new package directory")
    p.add_argument("--name", help="package/model name (default: the metadata's)")
    p.add_argument("--version", help="package version, dotted numbers (default: the metadata's)")
    p.add_argument("--provenance", type=json.loads, default={}, help="JSON object added to the provenance")
    p.add_argument("--archive", type=Path, help="also write the package as one tar (what the hub publishes)")
    p.set_defaults(func=_package)

    p = sub.add_parser("verify", help="check a package's signature and every hash")
    p.add_argument("package", type=Path)
    p.add_argument("--trusted", type=Path, action="append", default=[], help="trusted public key (repeatable)")
    p.set_defaults(func=_verify)

    p = sub.add_parser("install", help="verify and install a package (directory or tar) on this gate")
    p.add_argument("package", type=Path)
    _config_option(p)
    p.set_defaults(func=_install)

    p = sub.add_parser("list", help="installed packages, the active and the previous one")
    _config_option(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = sub.add_parser("activate", help="canary-replay the labelled samples, then switch to an installed package")
    p.add_argument("name")
    p.add_argument("version")
    _config_option(p)
    p.add_argument("--skip-canary", action="store_true",
                   help="switch without the replay (only for a gate without a usable model)")
    p.set_defaults(func=_activate)

    p = sub.add_parser("rollback", help="back to the previous package (or the configured model)")
    _config_option(p)
    p.set_defaults(func=_rollback)

    p = sub.add_parser("adapt", help="fit a signed package to this site's scanner from its clean scans (no TensorFlow)")
    p.add_argument("--clean", type=Path, required=True, help="directory of officer-confirmed clean scans (.npz)")
    p.add_argument("--samples", type=Path, help="the gate's labelled samples (anomalies are measured too)")
    p.add_argument("--out", type=Path, required=True, help="new package directory")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key that signs the package")
    p.add_argument("--model", type=Path, help="base model (.tflite or package); default: the shipped model")
    p.add_argument("--name", help="package name (default: the base model's name + '-site')")
    p.add_argument("--version", required=True, help="package version (above every version the gates have)")
    p.add_argument("--target-false-alarm", type=float, default=0.02,
                   help="share of clean scans allowed above the threshold (default 0.02, the false-alarm "
                        "bar; half for the network, half for the feature distances)")
    p.add_argument("--holdout", type=float, default=0.3, help="share of clean scans held out for validation")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    p.set_defaults(func=_adapt)

    p = sub.add_parser("report", help="per lane: the review's verdicts against officers' findings")
    _config_option(p)
    p.add_argument("--version", help="only verdicts of this model version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_report)


# ---------------------------------------------------------------------------- helpers


def _fail(message: str, code: int) -> int:
    print(f"smartgate model: {message}", file=sys.stderr)
    return code


def _gate(args: argparse.Namespace) -> tuple[Any, list[Path]]:
    from gate_controller.config import load_config, resolve_secret_path

    config = load_config(args.config)
    base = args.config.resolve().parent
    return config, [resolve_secret_path(p, base_dir=base) for p in config.inference.trusted_keys]


# ---------------------------------------------------------------------------- commands


def _keygen(args: argparse.Namespace) -> int:
    from inference.package import generate_key

    try:
        key_id = generate_key(args.private, args.public)
    except (OSError, ValueError) as err:
        return _fail(str(err), EX_FAIL)
    print(f"key {key_id}: private {args.private}, public {args.public}")
    return 0


def _package(args: argparse.Namespace) -> int:
    from inference.errors import ModelError
    from inference.package import build_package, load_manifest, load_private_key, pack
    from inference.package.loader import is_package

    try:
        key = load_private_key(args.key)
        model = args.model
        provenance: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        figures: dict[str, Any] = {}
        if is_package(model):
            base = load_manifest(model)
            provenance = {**base.provenance, "repackaged_from": {"name": base.name, "version": base.version,
                                                                  "sha256": base.digest}}
            figures = dict(base.figures)
            files = {n: (model / n).read_bytes() for n in base.files if n not in (base.model_file, base.metadata_file)}
            model = model / base.model_file
        provenance.update(args.provenance)
        manifest = build_package(model, args.out, key=key, name=args.name, version=args.version, files=files,
                                 provenance=provenance, figures=figures)
        if args.archive is not None:
            args.archive.write_bytes(pack(args.out))
    except (ModelError, OSError, ValueError) as err:
        return _fail(str(err), EX_REFUSED)
    print(f"{manifest.name} {manifest.version} -> {args.out}  sha256={manifest.digest}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from inference.package import PackageError, load_public_keys, verify_package

    try:
        package = verify_package(args.package, load_public_keys(args.trusted))
    except PackageError as err:
        return _fail(str(err), EX_REFUSED)
    m = package.manifest
    print(f"ok: {m.name} {m.version} signed by key {package.signed_by}, {len(m.files)} files, sha256={m.digest}")
    return 0


def _install(args: argparse.Namespace) -> int:
    from gate_controller.core.errors import ConfigError
    from inference.package import PackageError, PackageStore, load_public_keys

    try:
        config, key_paths = _gate(args)
        store = PackageStore(config.storage.models_dir)
        keys = load_public_keys(key_paths)
        if args.package.is_dir():
            package = store.install_dir(args.package, keys)
        else:
            package = store.install_archive(args.package.read_bytes(), keys)
    except ConfigError as err:
        return _fail(str(err), EX_CONFIG)
    except (PackageError, OSError) as err:
        return _fail(str(err), EX_REFUSED)
    m = package.manifest
    print(f"installed {m.name} {m.version} (signed by {package.signed_by}) in {package.directory}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from gate_controller.core.errors import ConfigError
    from inference.package import PackageError, PackageStore

    try:
        config, _ = _gate(args)
        store = PackageStore(config.storage.models_dir)
        rows = store.installed()
    except ConfigError as err:
        return _fail(str(err), EX_CONFIG)
    except PackageError as err:
        return _fail(str(err), EX_FAIL)
    if args.json:
        print(json.dumps({"packages": rows, "fallback": str(config.inference.model_path or "shipped model")}))
        return 0
    if not any(r.get("role") == "active" for r in rows):
        print(f"active: the configured model ({config.inference.model_path or 'shipped with smartgate'})")
    for r in rows:
        if "error" in r:
            print(f"  {r['name']} {r['version']}  UNREADABLE: {r['error']}")
            continue
        role = f"[{r['role']}]" if r["role"] else ""
        print(f"  {r['name']} {r['version']} {role:10} {r['created']}  sha256={r['digest'][:16]}...")
    return 0


def _activate(args: argparse.Namespace) -> int:
    from gate_controller.core.errors import ConfigError
    from inference.errors import SmartGateError
    from inference.package import PackageError, PackageStore, load_public_keys
    from inference.package.canary import compare, load_samples, replay

    try:
        config, key_paths = _gate(args)
        store = PackageStore(config.storage.models_dir)
        package = store.verified(args.name, args.version, load_public_keys(key_paths))
    except ConfigError as err:
        return _fail(str(err), EX_CONFIG)
    except PackageError as err:
        return _fail(str(err), EX_REFUSED)
    if not args.skip_canary:
        samples_dir = config.storage.samples_dir
        samples = load_samples(samples_dir) if samples_dir.is_dir() else []
        current = store.active_path() or config.inference.model_path
        try:
            result = compare(replay(current, samples), replay(package.directory, samples), samples)
        except SmartGateError as err:
            return _fail(f"canary could not run: {err}", EX_FAIL)
        cur, cand = result["current"], result["candidate"]
        print(f"canary on {result['compared']} samples: false alarms {cur['false_alarms']} -> {cand['false_alarms']}"
              f" of {cand['clean']}, detected {cur['detected']} -> {cand['detected']} of {cand['positives']}")
        if len(samples) < config.inference.canary.min_samples:
            return _fail(f"{len(samples)} labelled samples, canary.min_samples is "
                         f"{config.inference.canary.min_samples}; current model kept", EX_FAIL)
        if not result["passed"]:
            return _fail("canary failed, current model kept: " + "; ".join(result["reasons"]), EX_FAIL)
    store.activate(package, reason="smartgate model activate" + (" (canary skipped)" if args.skip_canary else ""))
    print(f"active: {args.name} {args.version} (a running daemon switches within seconds)")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from gate_controller.core.errors import ConfigError
    from inference.package import PackageError, PackageStore

    try:
        config, _ = _gate(args)
        rolled, now = PackageStore(config.storage.models_dir).rollback(reason="smartgate model rollback")
    except ConfigError as err:
        return _fail(str(err), EX_CONFIG)
    except PackageError as err:
        return _fail(str(err), EX_FAIL)
    fallback = config.inference.model_path or "shipped with smartgate"
    target = f"{now.name} {now.version}" if now else f"the configured model ({fallback})"
    print(f"rolled back from {rolled.name if rolled else '?'} {rolled.version if rolled else ''} to {target}")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    import functools

    from inference.adaptation.adapt import AdaptOptions, adapt, adapt_cli_summary
    from inference.errors import ModelError
    from inference.package import build_package, load_private_key
    from inference.package.loader import resolve_model_path
    from inference.runtime import DEFAULT_MODEL_PATH

    if not 0.0 < args.target_false_alarm < 0.5 or not 0.05 <= args.holdout <= 0.5:
        return _fail("--target-false-alarm must be in (0, 0.5) and --holdout in [0.05, 0.5]", EX_CONFIG)
    try:
        key = load_private_key(args.key)
        base = resolve_model_path(args.model) or DEFAULT_MODEL_PATH
        name = args.name
        if name is None:
            from inference.model_spec import load_spec, metadata_path_for

            name = f"{load_spec(metadata_path_for(base)).name}-site"
        report = adapt(args.model, args.clean, args.out, sign=functools.partial(build_package, key=key), name=name,
                       version=args.version, samples_dir=args.samples,
                       options=AdaptOptions(holdout=args.holdout, target_false_alarm=args.target_false_alarm,
                                            threads=args.threads),
                       progress=lambda line: print(line, flush=True))
    except (ModelError, OSError, ValueError) as err:
        return _fail(str(err), EX_REFUSED)
    for line in adapt_cli_summary(report):
        print(line)
    print(f"package {name} {args.version} -> {args.out} (report.json inside; {report['timing_s']['total']:.0f} s)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from gate_controller.core.errors import ConfigError
    from gate_controller.lifecycle.report import load_verdict_samples, shadow_report

    try:
        config, _ = _gate(args)
    except ConfigError as err:
        return _fail(str(err), EX_CONFIG)
    samples_dir = config.storage.samples_dir
    samples = load_verdict_samples(samples_dir) if samples_dir.is_dir() else []
    report = shadow_report(samples, [lane.id for lane in config.lanes], config.inference.live_bar,
                           version=args.version)
    for lane, figures in report["lanes"].items():
        figures["mode_configured"] = config.review_mode(lane) if lane in [x.id for x in config.lanes] else None
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(_report_text(report))
    return 0 if all(v["meets_live_bar"] for v in report["lanes"].values()) else EX_FAIL


def _rate(r: dict[str, Any]) -> str:
    if r["rate"] is None:
        return "n/a (0 scans)"
    return f"{r['count']}/{r['of']} = {r['rate']:.1%} (95 % CI {r['ci95'][0]:.1%}..{r['ci95'][1]:.1%})"


def _report_text(report: dict[str, Any]) -> str:
    bar = report["bar"]
    lines = [f"live bar: false alarms <= {bar['max_false_alarm']:.1%} and detection >= {bar['min_detection']:.1%} "
             f"(95 % bounds), at least {bar['min_clean']} clean and {bar['min_anomalies']} anomalies"]
    for lane, f in report["lanes"].items():
        lines.append(f"lane {lane} (configured {f.get('mode_configured')}): {f['clean']} clean, {f['anomalies']} "
                     f"anomalies, {f['unavailable']} without verdict, {f['unreviewed']} without review")
        lines.append(f"  false alarms  {_rate(f['false_alarm'])}")
        lines.append(f"  detection     {_rate(f['detection'])}")
        for label, r in f["detection_by_label"].items():
            lines.append(f"    {label:14} {_rate(r)}")
        lines.append("  meets the live bar" if f["meets_live_bar"] else
                     "  NOT ready for live: " + "; ".join(f["short_of_bar"]))
    return "\n".join(lines)
