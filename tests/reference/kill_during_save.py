"""Runs `cxrclip_jax.main` with argv, SIGKILLing itself while Orbax commits the checkpoint of step
$KILL_AT_STEP: the step's files are all written but the temporary directory is not yet renamed.
That is the last moment a preemption can leave a partial save behind."""
import asyncio
import os
import signal
import sys

from orbax.checkpoint._src.path import async_path

_rename = async_path.rename


async def _rename_or_die(src, dst):
  if dst.name == os.environ["KILL_AT_STEP"]:
    await asyncio.sleep(0.2)  # let other writers of this step finish too
    os.kill(os.getpid(), signal.SIGKILL)
  return await _rename(src, dst)


async_path.rename = _rename_or_die

if __name__ == "__main__":
  from absl import app
  from cxrclip_jax import main
  app.run(lambda argv: sys.exit(main.main(argv)))
