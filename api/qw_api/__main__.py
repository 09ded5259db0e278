"""`python -m qw_api`: serve the API on QW_API_HOST:QW_API_PORT."""

from __future__ import annotations

import uvicorn
from qw_core.logs import configure_logging
from qw_core.settings import ApiSettings

from .main import create_app


def main() -> None:
    settings = ApiSettings()
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
