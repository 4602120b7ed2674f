"""The runtime layer's small pieces: the metric writer's flushing."""

import tensorboardX

from ddpm_jax.runtime import metric_writer


class FakeSummaryWriter:
  def __init__(self, logdir):
    self.scalars, self.flushes, self.closed = [], 0, False

  def add_scalar(self, tag, value, step):
    self.scalars.append((tag, value, step))

  def flush(self):
    self.flushes += 1

  def close(self):
    self.closed = True


def test_the_metric_writer_flushes_at_checkpoints_not_every_log_line(monkeypatch, tmp_path):
  monkeypatch.setattr(tensorboardX, "SummaryWriter", FakeSummaryWriter)
  writer = metric_writer.MetricWriter(str(tmp_path), total_steps=100, is_writer=True)
  metrics = {"loss": 1.0, "grad_norm": 2.0, "lr": 1e-3}
  metrics |= {f"loss_q{q}_{kind}": 1.0 for q in range(4) for kind in ("sum", "count")}
  for step in range(1, 11):
    writer.add(metrics)
    writer.write(step)
  writer.write_scalars("eval", {"loss": 0.5}, 10)
  assert writer.writer.flushes == 0 and len(writer.writer.scalars) > 10
  writer.flush()  # the train loop's, after each checkpoint
  assert writer.writer.flushes == 1
  writer.close()
  assert writer.writer.closed
