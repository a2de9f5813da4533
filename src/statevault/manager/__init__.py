"""The checkpoint manager of training runs: steps, retention, async saves, resume, preemption.

``manager.py`` (CheckpointManager) uses ``policies.py`` (pure retention rules),
``layout.py`` (every file-system operation), ``catalog.py`` (the committed steps and their
validity), ``lock.py`` (one manager per directory), ``background.py`` and ``snapshot.py``
(async saves from bounded host staging) and ``steps.py`` (the values it returns);
``preemption.py`` saves on SIGTERM. Imported by the public package.
"""
