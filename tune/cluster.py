"""Checks run before Ray starts or connects: the dashboard's packages and the cluster's token.

Left to Ray, a missing dashboard package is a traceback from deep inside `ray.init`, and
a missing or wrong token is 20 s of retry warnings ending in "Failed to connect to Ray
cluster". Here each is one line that says what to do, before anything is written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

CLUSTER_INSTALL = 'pip install -e ".[cluster]"'

# What ray/dashboard/optional_deps.py imports in Ray 2.60: Ray refuses to start its
# dashboard (and with it the Jobs API) when one of them is missing. They come with
# ray[default]; tests/tune/test_cluster.py keeps this list in step with the installed Ray.
DASHBOARD_MODULES = ("aiohttp", "aiohttp_cors", "grpc", "opencensus", "opentelemetry",
                     "opentelemetry.exporter.prometheus", "opentelemetry.proto",
                     "prometheus_client", "pydantic")

GET_TOKEN_HINT = "`ray get-auth-token` on the cluster's head prints it"


class RayAccessError(RuntimeError):
    """Ray cannot start its dashboard or accept this process; the message says what to do."""


def missing_dashboard_modules() -> list[str]:
    """Return the modules Ray's dashboard imports that are not installed (empty: it can start)."""
    missing = []
    for name in DASHBOARD_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def check_dashboard_packages() -> None:
    """Raise RayAccessError naming the install command when Ray's dashboard cannot start here."""
    missing = missing_dashboard_modules()
    if missing:
        raise RayAccessError(f"--ray-dashboard needs the Ray dashboard's packages (missing: "
                             f"{', '.join(missing)}); install them with: {CLUSTER_INSTALL}")


def token_source() -> str:
    """Return where Ray reads this process's token, in its order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return "~/.ray/auth_token"


@contextlib.contextmanager
def _quiet_native_stderr():
    """Send file descriptor 2 to /dev/null while the block runs (Ray's C++ client logs there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _token_mode_on() -> bool:
    from ray._raylet import AuthenticationMode, get_authentication_mode

    return get_authentication_mode() == AuthenticationMode.TOKEN


def check_cluster_access(address: str) -> None:
    """Raise RayAccessError when the Ray cluster at `address` (host:port) rejects this process or does not answer.

    Ray Client ("ray://...") and discovered ("auto") addresses are left to Ray.
    """
    if "://" in address or address in ("auto", "local"):
        return
    from ray._raylet import AuthenticationTokenLoader, GcsClient
    from ray.exceptions import AuthenticationError, RpcError

    where = f"the Ray cluster at {address} (RAY_ADDRESS)"
    token_mode = _token_mode_on()
    if token_mode:
        # Checked first: a GCS client in token mode without a token aborts the process.
        try:
            AuthenticationTokenLoader.instance().has_token()
        except AuthenticationError:
            raise RayAccessError(
                f"RAY_AUTH_MODE=token but no token found in {token_source()}: put the token of "
                f"{where} there ({GET_TOKEN_HINT})") from None
    try:
        # The connection ray.init makes first, without its 20 s of retries on a bad token;
        # the C++ client's own warning would only repeat the line below.
        with _quiet_native_stderr():
            GcsClient(address=address)
    except AuthenticationError:
        if token_mode:
            raise RayAccessError(f"{where} rejected the token from {token_source()}: use that "
                                 f"cluster's token ({GET_TOKEN_HINT})") from None
        raise RayAccessError(f"{where} requires its token: set RAY_AUTH_MODE=token and put the token in "
                             f"~/.ray/auth_token or a file named by RAY_AUTH_TOKEN_PATH ({GET_TOKEN_HINT})"
                             ) from None
    except RpcError as err:
        raise RayAccessError(f"{where} does not answer: {str(err).splitlines()[0]}") from None
