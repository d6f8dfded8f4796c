"""The test harness: one place for free ports, servers, tiny models, the shared data and the rule for
missing infrastructure. tests/README.md is the guide; in short:

- `helpers.infra.require(condition, reason)`: skip locally, fail under `CI=true`. Use it for anything a
  test needs from outside the checkout; keep plain `pytest.skip` for platform limits (glibc, CUDA).
- `helpers.ports.free_port()`.
- `helpers.server`: `ServeProcess` (`preftune serve` as a subprocess), `serve_in_thread(app)` (uvicorn in a
  thread), `child_env(home)` and `preftune_command(...)` for any other `preftune` child process.
- `helpers.models`: `build_tiny`, `build_lively`, `install_base_model(home, model_dir)`.
- `helpers.data`: `SHARED_DATA`, `ORCA`, `require_shared(relative)`, `first_lines`, `read_rows`, `write_rows`.
- `helpers.postgres`: `require_postgres()`, `cluster(binaries)`, `create_database(base_url)`.
- `helpers.faults`: `small_disk(path, size)` (a size-limited tmpfs; skip locally, fail in CI without mount), `fill_disk(path, leave)`.
- `helpers.browser`: `CHROMIUM`, `require_chromium()`, `screenshots_dir(default)`.
- `helpers.fixtures`: the fixtures tests/conftest.py registers for every directory (`preftune_home`,
  `tiny_model_dir`, `lively_model_dir`, `shared_data`, `orca_path`, `postgres_server`, `start_server`).

Tests run with `--import-mode=importlib`, so test modules cannot import each other or a conftest;
pytest's `pythonpath` puts `tests/` on the path for this package (`from helpers.server import ...`)."""
