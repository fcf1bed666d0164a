"""scripts/train.py for tests/test_distributed.py, with rank 1 changed through the environment:

- ANETRAIN_TEST_RANK1_ARGS: arguments added to rank 1's command line (its own --out, say);
- ANETRAIN_TEST_NUDGE_STEP: right after that optimizer step, rank 1 adds 1e-3 to one weight of
  NUDGED, so the ranks no longer hold the same model (what --sync-check is there to catch);
- ANETRAIN_TEST_PID_DIR: every rank writes its pid to <dir>/rank<RANK>.pid (to be killed);
- ANETRAIN_TEST_FAIL_STEP: rank 1's first process image fails the step after that many updates
  with a BackendError, raised halfway through the ranges handed to grads_ready (as a kernel
  failing mid-backward would), or at once without grads_ready.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from anetrain import _native, model, trainer  # noqa: E402

NUDGED = "layers.1.feed_forward.w2"


def main():
    argv = sys.argv[1:]
    pid_dir = os.environ.get("ANETRAIN_TEST_PID_DIR")
    if pid_dir:
        with open(os.path.join(pid_dir, f"rank{os.environ['RANK']}.pid"), "w") as f:
            f.write(str(os.getpid()))
    if os.environ.get("RANK") == "1":
        argv += os.environ.get("ANETRAIN_TEST_RANK1_ARGS", "").split()
        nudge_step = os.environ.get("ANETRAIN_TEST_NUDGE_STEP")
        if nudge_step:
            update = model.Model.update

            def nudged_update(self, *args, **kwargs):
                norm = update(self, *args, **kwargs)
                if self.step_count == int(nudge_step):
                    w = self.get(NUDGED)
                    w.flat[0] += 1e-3
                    self.set(NUDGED, w)
                return norm

            model.Model.update = nudged_update
        fail_step = os.environ.get("ANETRAIN_TEST_FAIL_STEP")
        if fail_step and not os.environ.get(trainer.RESTARTS_ENV):
            accumulate = model.Model.accumulate

            def failing_accumulate(self, tokens, grads_ready=None):
                if self.step_count != int(fail_step):
                    return accumulate(self, tokens, grads_ready)
                failure = _native.BackendError("evaluation failed (simulated)")
                if grads_ready is None:
                    raise failure
                handed = []

                def ready(offset, count):
                    if len(handed) == 2:
                        raise failure
                    handed.append(offset)
                    grads_ready(offset, count)

                return accumulate(self, tokens, ready)

            model.Model.accumulate = failing_accumulate
    return trainer.main(argv)


if __name__ == "__main__":
    sys.exit(main())
