"""Documented hooks into :class:`distgan.trainer.Trainer` (tests, tools and users plug in here).

Pass instances to ``Trainer(..., callbacks=[...])`` or ``distgan.train.main(argv, callbacks=[...])``.
Every method is optional and runs on every rank, in the training loop's order:

    on_train_start(trainer)                  after set-up (resumed state loaded), before the first step
    on_step_end(trainer)                     after each step's D and G updates and the EMA; trainer.step counts it
    on_log(trainer, local_stats, metrics)    at each log tick: this rank's [loss/D, D(x), D(G(z)), loss/G]
                                             averaged since the last tick, and the metrics rank 0 logs
    on_train_end(trainer)                    after the last step, before the final status is written

Besides these, a Trainer subclass may override the two documented data hooks ``real_batch(j, micro)``
and ``noise(n)`` (fault injection, fixed noise).
"""

from __future__ import annotations


class Callback:
    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer) -> None:
        pass

    def on_log(self, trainer, local_stats, metrics: dict) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass
