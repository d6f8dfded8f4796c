"""Runs jobs: claims queued jobs with a lease, runs the trainer in a child process, heartbeats,
cancels, and recovers jobs whose runner died. See `preftune.runner.worker.Runner`.
"""
