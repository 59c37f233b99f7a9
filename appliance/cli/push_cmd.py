"""``face-appliance push-model``: send a model package to an appliance over CAN (UDS)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

from pydantic import ValidationError

from .common import EXIT_CONFIG, EXIT_OK, add_config_option, load_cli_config


def _can_id(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a CAN id (e.g. 0x7E0 or 2016)") from None


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "push-model",
        help="send a model package to an appliance over CAN (UDS), verify it, optionally activate it",
        description="Transfer PACKAGE to the appliance's UDS server (programming session, "
        "SecurityAccess, RequestDownload, TransferData, RequestTransferExit), run its verify "
        "routine and, with --activate, start the swap and wait for its outcome. An interrupted "
        "transfer resumes where the appliance stopped receiving when run again. The CAN settings "
        "default to [updates.can] of --config (the appliance's ids: requests go to rx-id).",
    )
    parser.add_argument("package", type=Path, metavar="PACKAGE", help="the model package file")
    parser.add_argument("--interface", default=None, help="python-can interface (socketcan, serial, …)")
    parser.add_argument("--channel", default=None, help="python-can channel (can0, /dev/ttyUSB0, …)")
    parser.add_argument("--bitrate", type=int, default=None, help="nominal bit rate in bit/s")
    parser.add_argument("--fd", action="store_true", default=None, help="use CAN FD frames")
    parser.add_argument("--data-bitrate", type=int, default=None, help="CAN FD data-phase bit rate in bit/s")
    parser.add_argument(
        "--rx-id", type=_can_id, default=None, help="the appliance's request id (default 0x7E0)"
    )
    parser.add_argument(
        "--tx-id", type=_can_id, default=None, help="the appliance's response id (default 0x7E8)"
    )
    parser.add_argument("--extended-ids", action="store_true", default=None, help="29-bit CAN ids")
    parser.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help="the SecurityAccess secret (default: updates.security_secret_file)",
    )
    parser.add_argument("--activate", action="store_true", help="start the swap and wait until it ends")
    parser.add_argument(
        "--retries", type=int, default=3, help="resend a block without an answer this often (default 3)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="longest wait for one answer, pending answers included, in s (default 60)",
    )
    parser.add_argument(
        "--swap-timeout", type=float, default=900.0, help="longest wait for the swap, in s (default 900)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_option(parser)
    parser.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from ..config import UpdatesCanConfig
    from ..updates.push import PushOptions, push_package, tqdm_progress
    from ..updates.uds_protocol import read_security_secret

    config = load_cli_config(args)
    overrides: Dict[str, Any] = {
        key: value
        for key, value in (
            ("interface", args.interface),
            ("channel", args.channel),
            ("bitrate", args.bitrate),
            ("fd", args.fd),
            ("data_bitrate", args.data_bitrate),
            ("rx_id", args.rx_id),
            ("tx_id", args.tx_id),
            ("extended_ids", args.extended_ids),
        )
        if value is not None
    }
    try:
        can_config = UpdatesCanConfig.model_validate({**config.updates.can.model_dump(), **overrides})
    except ValidationError as err:
        problems = "; ".join(str(error.get("msg", "")).replace("Value error, ", "") for error in err.errors())
        sys.stderr.write(f"error: CAN settings ([updates.can] with the options given): {problems}\n")
        return EXIT_CONFIG
    secret_file = args.secret_file or config.updates.security_secret_file
    if secret_file is None:
        sys.stderr.write(
            "error: no SecurityAccess secret: give --secret-file or updates.security_secret_file\n"
        )
        return EXIT_CONFIG
    if args.retries < 0 or args.timeout <= 0 or args.swap_timeout <= 0:
        sys.stderr.write("error: --retries must be ≥ 0 and the timeouts > 0\n")
        return EXIT_CONFIG
    secret = read_security_secret(Path(secret_file))
    options = PushOptions(
        activate=args.activate,
        retries=args.retries,
        request_timeout_s=args.timeout,
        swap_timeout_s=args.swap_timeout,
    )
    result = push_package(
        can_config, secret, args.package, options, progress=None if args.no_progress else tqdm_progress
    )
    print(f"package   {args.package} ({result.size} bytes, sha256 {result.sha256})")
    if result.sent_bytes:
        where = f"resumed at byte {result.resumed_from}" if result.resumed_from else "from the start"
        print(
            f"transfer  {where}: {result.sent_bytes} bytes in {result.transfer_s:.1f} s "
            f"({result.goodput_bytes_per_s / 1000:.1f} kB/s)"
        )
    else:
        print("transfer  nothing to send: the appliance already held this package")
    print(f"verified  staged {result.staged_version}")
    if result.swap_state is not None:
        print(f"swap      {result.swap_state}; active {result.active_version}")
    return EXIT_OK
