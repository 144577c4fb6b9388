"""The Hugging Face token: from the environment or a .env file, never logged or written anywhere."""
import os
from pathlib import Path


def hf_token():
    """HF_TOKEN from the environment, else from ./.env; None when neither has it (public models work)."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    env_file = Path(".env")
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "HF_TOKEN" and value.strip():
                return value.strip().strip("'\"")
    return None
