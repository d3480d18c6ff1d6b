"""`monitor fleet status`: the fleet as its PostgreSQL sees it (nodes with last heartbeat, cameras held and outbox
lag; cameras with their holder), read with the config's fleet section."""
from __future__ import annotations

import json
import sys

from monitor.config.loader import ConfigError, format_errors, load_config
from monitor.fleet.database import FleetDatabase, FleetError
from monitor.fleet.status import fleet_status, format_status


def status_main(config_path: str, as_json: bool = False) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(format_errors(e, config_path), file=sys.stderr)
        return 2
    if config.fleet is None:
        print(f"monitor: {config_path} has no fleet section", file=sys.stderr)
        return 2
    database = FleetDatabase(config.fleet, f"{config.node.name}-cli")
    try:
        database.open()
        status = fleet_status(database)
    except FleetError as e:
        print(f"monitor: {e}", file=sys.stderr)
        return 1
    except Exception as e:      # psycopg errors while reading: one line, DSN redacted
        print(f"monitor: fleet database {database.where}: {' '.join(str(e).split())[:200]}", file=sys.stderr)
        return 1
    finally:
        database.close()
    print(json.dumps(status, indent=2) if as_json else format_status(status))
    return 0
