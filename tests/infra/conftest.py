"""pytest-testinfra checks of deployed hosts; they run only against a named inventory.

    OLLAMA_FLEET_INVENTORY=inventories/lab.py python3 -m pytest tests/infra --ssh-config=.lab/slot0/ssh_config

The end-to-end tier runs them after each deploy. Without an inventory there is no fleet to check, so the
module is not collected (testinfra would otherwise check the controller itself).
"""

from __future__ import annotations

import os

from infra_fleet import INVENTORY_ENV

collect_ignore = [] if os.environ.get(INVENTORY_ENV) else ["test_fleet_host.py"]
