"""Where the EC2 provider's credentials, region and endpoint come from: AWS's own chain.

Credentials: flags, then $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY [/$AWS_SESSION_TOKEN],
then the $AWS_PROFILE section of ~/.aws/credentials. The region: $AWS_REGION, $AWS_DEFAULT_REGION,
then the profile's in ~/.aws/config. The endpoint can be pointed elsewhere the standard way
($AWS_ENDPOINT_URL_EC2, then $AWS_ENDPOINT_URL, or --api-url) for tests, private regions and
compatible clouds.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from ..credentials import access_token
from ..errors import ProvisionError, UsageError, os_words

KEY_ENV = ("AWS_ACCESS_KEY_ID",)
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY",)
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL")
DEFAULT_REGION = "eu-west-1"


@dataclass(frozen=True)
class AwsCredentials:
    key_id: str
    secret: str
    session_token: str | None = None
    source: str = ""  # where they came from, for error messages (never the values)


def aws_credentials(
    key_file: Path | None, key: str | None, secret_file: Path | None, secret: str | None
) -> AwsCredentials:
    """The AWS chain: flags/files, then the environment, then the shared credentials file."""
    if key_file is not None or key or secret_file is not None or secret:
        key_id = access_token("AWS", key_file, key, KEY_ENV)
        secret_value = access_token("AWS", secret_file, secret, SECRET_ENV, ("--secret-key-file", "--secret-key"))
        return AwsCredentials(key_id, secret_value, os.environ.get("AWS_SESSION_TOKEN") or None, "flags")
    env_key, env_secret = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if env_key.strip() and env_secret.strip():
        return AwsCredentials(env_key.strip(), env_secret.strip(), os.environ.get("AWS_SESSION_TOKEN") or None, "env")
    if env_key.strip():  # as AWS's own chain: a key id without its secret is an error, not a reason to look on
        raise UsageError("$AWS_ACCESS_KEY_ID is set but $AWS_SECRET_ACCESS_KEY is not: set it too, or unset "
                         "$AWS_ACCESS_KEY_ID to use a profile of the AWS credentials file")
    profile = os.environ.get("AWS_PROFILE") or "default"
    path = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials").expanduser()
    parser = _ini(path, "AWS credentials file")
    wanted = ("aws_access_key_id", "aws_secret_access_key")
    missing = [key for key in wanted if not parser.get(profile, key, fallback="").strip()]
    if not missing:
        section = parser[profile]
        return AwsCredentials(
            section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip(),
            section.get("aws_session_token", "").strip() or None, f"profile {profile!r} in {path}",
        )
    if parser.has_section(profile):  # it is there: "add profile 'default'" sent users to add what they had
        raise UsageError(f"profile {profile!r} in {path} has no {' and no '.join(missing)}: add it (`aws configure` "
                         "writes both), or give the credentials another way (--access-token-file and "
                         "--secret-key-file, or $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY)")
    raise UsageError(
        "no AWS credentials: give --access-token-file FILE (key id) and --secret-key-file FILE, "
        "set $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, or add "
        f"profile {profile!r} to {path} (select another with $AWS_PROFILE)"
    )


def _ini(path: Path, what: str) -> configparser.ConfigParser:
    """The file ``aws configure`` writes, parsed (empty when there is none); a one-line error when it cannot be:
    ConfigParser.read() skips a file it cannot open and raises UnicodeDecodeError on one that is not text."""
    parser = configparser.ConfigParser()
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        return parser
    except IsADirectoryError:
        raise ProvisionError(f"{what} {path} is a directory: move it away, or set the credentials another way") from None
    except OSError as exc:
        raise ProvisionError(f"cannot read {what} {path}: {os_words(exc)}") from None
    except UnicodeDecodeError:
        raise ProvisionError(f"{what} {path} is not text (UTF-8): write it again with `aws configure`") from None
    try:
        parser.read_string(text, str(path))
    except configparser.Error:
        raise ProvisionError(f"cannot parse {what} {path}: it is not in the format `aws configure` "
                             "writes ([profile] lines, then key = value lines)") from None
    return parser


def default_region() -> str:
    """$AWS_REGION, $AWS_DEFAULT_REGION, the profile's region in ~/.aws/config, else eu-west-1."""
    for name in REGION_ENV:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    profile = os.environ.get("AWS_PROFILE") or "default"
    path = Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()
    try:
        parser = _ini(path, "AWS config file")
    except ProvisionError:
        return DEFAULT_REGION
    section = profile if profile == "default" else f"profile {profile}"
    return parser.get(section, "region", fallback=DEFAULT_REGION).strip() or DEFAULT_REGION


def endpoint_url(api_url: str | None) -> str | None:
    if api_url:
        return api_url
    return next((os.environ[n].strip() for n in ENDPOINT_ENV if os.environ.get(n, "").strip()), None)
