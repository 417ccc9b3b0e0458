"""The vLLM suite (``vllm_suite/``) runs only inside ``.venv-vllm``; elsewhere it is never collected.

From the main environment, ``test_vllm.py`` runs it in ``.venv-vllm`` through a subprocess, so the one
top-level ``pytest`` drives everything while the main environment keeps its own package pins.
"""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("vllm") is not None else ["vllm_suite/*"]
