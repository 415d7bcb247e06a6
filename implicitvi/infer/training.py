r"""Minibatch SVI with checkpoints: what ``SVI.run`` does, for data that arrive in batches.

:func:`run_minibatch` takes ``num_steps`` steps of ``svi.update(state, batch, *args)`` on
minibatches of a data array. Steps run in jitted chunks (a ``lax.scan`` of ``chunk_size``
updates, so the host is visited once per chunk), a progress bar shows the mean loss of the last
chunk, and every ``checkpoint_every`` steps the SVI state, the loss history and a configuration
dict are written to one ``.npz`` file. A re-run with ``resume=True`` continues from that file,
after checking that it was written for the same configuration and the same state layout.

Batches are drawn epoch by epoch without replacement; the permutation of epoch ``e`` is a
function of ``(seed, e)`` only, so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from implicitvi import _checks
from implicitvi.infer import nonfinite, sharding

__all__ = ["TrainResult", "load_checkpoint", "run_minibatch", "save_checkpoint"]


class TrainResult(NamedTuple):
    state: Any  # the final SVIState
    losses: np.ndarray  # (num_steps,) loss of every step, resumed steps included


def _check_checkpoint_path(path) -> None:
    """``path`` names a file in an existing, writable directory (checked before any step runs)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"checkpoint must be a path (str or os.PathLike), got {type(path).__name__}"
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {os.fspath(path)!r} is a directory; name a file in it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"checkpoint {os.fspath(path)!r}: directory {directory!r} does not exist; create it "
            "first"
        )
    if not os.access(directory, os.W_OK):
        raise PermissionError(
            f"checkpoint {os.fspath(path)!r}: directory {directory!r} is not writable"
        )


def save_checkpoint(path, state, losses, config: dict) -> None:
    """Write ``state`` (any pytree of arrays), the loss history and ``config`` to ``path``.

    ``config`` must be JSON-serialisable; it is what :func:`load_checkpoint` compares. The file
    is written to a temporary name first and renamed, so an interrupted write leaves the previous
    checkpoint intact. ``path`` must lie in an existing, writable directory
    (``FileNotFoundError``/``PermissionError`` otherwise).
    """
    _check_checkpoint_path(path)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, losses=np.asarray(losses), config=json.dumps(config, sort_keys=True), **arrays)
    os.replace(tmp, path)


def load_checkpoint(path, like, config: dict):
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``like``.

    Returns ``(state, losses)``. Raises ``FileNotFoundError`` if ``path`` is missing and
    ``ValueError`` if the file is not a checkpoint (not an ``.npz`` archive with a configuration
    and a loss history), was written for another configuration (naming the entries that
    differ) or its arrays do not fit ``like``'s leaves.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; run without resume first")
    with _open_checkpoint(path) as (f, saved):
        wanted = json.loads(json.dumps(config, sort_keys=True))
        if saved != wanted:
            keys = sorted(set(saved) | set(wanted))
            diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {wanted.get(k)!r} now" for k in keys if saved.get(k) != wanted.get(k)]
            raise ValueError(
                f"checkpoint {path!r} comes from another configuration ({'; '.join(diff)})"
            )
        leaves, treedef = jax.tree_util.tree_flatten(like)
        names = sorted((k for k in f.files if k.startswith("leaf_")), key=lambda k: int(k[5:]))
        if len(names) != len(leaves):
            raise ValueError(
                f"checkpoint {path!r} holds {len(names)} arrays but the state has {len(leaves)}"
            )
        restored = []
        for name, leaf in zip(names, leaves):
            arr = f[name]
            if arr.shape != np.shape(leaf) or arr.dtype != np.asarray(leaf).dtype:
                raise ValueError(
                    f"checkpoint {path!r}: array {name} has shape {arr.shape} and dtype {arr.dtype}, "
                    f"the state expects {np.shape(leaf)} and {np.asarray(leaf).dtype}"
                )
            restored.append(jnp.asarray(arr))
        return jax.tree_util.tree_unflatten(treedef, restored), np.array(f["losses"])


@contextlib.contextmanager
def _open_checkpoint(path):
    """``(NpzFile, its parsed config)`` for the checkpoint at ``path``; ``ValueError`` naming
    ``path`` for any file :func:`save_checkpoint` did not write."""
    not_checkpoint = f"checkpoint {path!r} is not a checkpoint written by save_checkpoint"
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{not_checkpoint} (it cannot be read as an .npz archive: {err})") from err
    if getattr(f, "files", None) is None:  # np.load gave the array of an .npy file
        raise ValueError(f"{not_checkpoint} (it holds a single array, not an .npz archive)")
    with f:
        missing = [k for k in ("config", "losses") if k not in f.files]
        if missing:
            raise ValueError(f"{not_checkpoint} (it has no {' or '.join(missing)} entry)")
        try:
            config = json.loads(str(f["config"]))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{not_checkpoint} (its config is not JSON: {err})") from err
        if not isinstance(config, dict):
            raise ValueError(f"{not_checkpoint} (its config is not a dict)")  # noqa: TRY004
        yield f, config


def _epoch_indices(seed: int, num_data: int, batch_size: int, start: int, count: int) -> np.ndarray:
    """Indices of the batches of steps ``start .. start + count - 1``, shape (count, batch_size)."""
    per_epoch = num_data // batch_size
    perms = {}  # one permutation per epoch the chunk touches, not one per step
    rows = []
    for step in range(start, start + count):
        epoch, position = divmod(step, per_epoch)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(num_data)
        rows.append(perms[epoch][position * batch_size : (position + 1) * batch_size])
    return np.stack(rows)


def _check_data_finite(data: jax.Array) -> None:
    """Floating ``data`` must be finite: a NaN row would otherwise surface steps later as a
    non-finite loss."""
    if jnp.issubdtype(data.dtype, jnp.floating) and _checks.is_concrete(data):
        host = np.asarray(data).reshape(data.shape[0], -1)
        bad = np.flatnonzero(~np.all(np.isfinite(host), axis=1))
        if bad.size:
            raise ValueError(
                f"data contains NaN or inf values in {bad.size} of its {data.shape[0]} rows "
                f"(the first is row {bad[0]}); remove or impute them before training"
            )


def run_minibatch(
    svi,
    key: jax.Array,
    data,
    num_steps: int,
    *args,
    batch_size: int,
    transform: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    chunk_size: int = 100,
    checkpoint: str | None = None,
    checkpoint_every: int | None = None,
    config: dict | None = None,
    resume: bool = False,
    progress_bar: bool = True,
    mesh=None,
    **kwargs,
) -> TrainResult:
    """Run ``num_steps`` SVI steps on minibatches of ``data``.

    Args:
        svi: a :class:`numpyro.infer.SVI`; its model and guide take the batch as first argument,
            then ``*args`` and ``**kwargs``.
        key: PRNG key; it seeds ``svi.init``, the batch order and ``transform``.
        data: array ``(num_data, ...)``; each step's batch is ``data[idx]`` with ``batch_size``
            rows, drawn epoch by epoch without replacement.
        num_steps: total number of steps (a resumed run counts the steps already taken).
        transform: ``transform(key, batch) -> batch`` applied to every batch inside the jitted
            step (e.g. :func:`implicitvi.datasets.binarize`).
        chunk_size: steps per jitted ``lax.scan`` and per progress-bar update.
        checkpoint: path of the ``.npz`` checkpoint; written every ``checkpoint_every`` steps
            (rounded up to whole chunks) and at the end.
        config: JSON-serialisable description of the run stored in the checkpoint; a resumed run
            must present the same one.
        resume: continue from ``checkpoint``.
        progress_bar: show a tqdm bar with the mean loss of the last chunk.
        mesh: shard each batch's rows over devices (:mod:`implicitvi.infer.sharding`): ``None``
            (default), ``"local"``, a sequence of devices or a :class:`jax.sharding.Mesh`;
            ``batch_size`` must be a multiple of the number of devices.

    Returns:
        :class:`TrainResult` ``(state, losses)``.

    Raises:
        ValueError / TypeError: bad sizes, a key that is not a PRNG key, floating ``data`` with
            NaN or inf entries (naming the first such row), or a checkpoint from another
            configuration.
        FileNotFoundError / PermissionError: the checkpoint's directory does not exist or is not
            writable (checked before the first step).
        FloatingPointError: a step's loss (or, under :class:`~implicitvi.infer.ImplicitELBO`,
            a latent or score) became non-finite; the message names the step and the quantity.
    """
    _checks.check_key(key)
    _checks.check_positive_int(num_steps, "num_steps")
    _checks.check_positive_int(batch_size, "batch_size")
    _checks.check_positive_int(chunk_size, "chunk_size")
    data = jnp.asarray(data)
    if data.ndim < 1 or data.shape[0] < batch_size:
        raise ValueError(
            f"batch_size must be at most the number of data rows, got {batch_size} for data of "
            f"shape {tuple(data.shape)}"
        )
    _check_data_finite(data)
    batch_sharding = sharding.as_mesh(mesh)
    sharding.check_divisible(batch_size, batch_sharding, "batch_size")
    if checkpoint_every is not None:
        _checks.check_positive_int(checkpoint_every, "checkpoint_every")
    if (resume or checkpoint_every is not None) and checkpoint is None:
        raise ValueError("resume and checkpoint_every need a checkpoint path")
    if checkpoint is not None:
        _check_checkpoint_path(checkpoint)
    config = dict(config or {})
    init_key, order_key, transform_key = jax.random.split(key, 3)
    seed = int(jax.random.randint(order_key, (), 0, 2**31 - 1))

    def batch_at(step, idx):
        batch = sharding.shard_leading(data[idx], batch_sharding)
        if transform is not None:
            batch = transform(jax.random.fold_in(transform_key, step), batch)
        return batch

    state = svi.init(init_key, batch_at(0, jnp.arange(batch_size)), *args, **kwargs)
    losses = np.zeros((0,), np.float32)
    if resume:
        state, losses = load_checkpoint(checkpoint, state, config)
        if len(losses) > num_steps:
            raise ValueError(
                f"checkpoint {checkpoint!r} has already taken {len(losses)} steps, more than "
                f"num_steps={num_steps}"
            )

    @jax.jit
    def run_chunk(state, steps, indices):
        def body(state, xs):
            step, idx = xs
            state, loss = svi.update(state, batch_at(step, idx), *args, **kwargs)
            loss = nonfinite.guard(
                loss,
                step,
                {"the loss": jnp.isfinite(loss)},
                where="run_minibatch",
                advice="lower the learning rate, or check the model's log density and the data",
            )
            return state, loss

        return jax.lax.scan(body, state, (steps, indices))

    done = len(losses)
    history = [losses]
    last_saved = done
    bar = tqdm(total=num_steps, initial=done, disable=not progress_bar)
    while done < num_steps:
        count = min(chunk_size, num_steps - done)
        indices = _epoch_indices(seed, data.shape[0], batch_size, done, count)
        try:
            state, chunk_losses = run_chunk(
                state, jnp.arange(done, done + count), jnp.asarray(indices)
            )
            chunk_losses = np.asarray(chunk_losses)
        except nonfinite.JIT_ERRORS as err:
            nonfinite.reraise(err)
            raise
        history.append(chunk_losses)
        done += count
        bar.update(count)
        bar.set_postfix(loss=f"{chunk_losses.mean():.4g}")
        if checkpoint_every is not None and done - last_saved >= checkpoint_every:
            save_checkpoint(checkpoint, state, np.concatenate(history), config)
            last_saved = done
    bar.close()
    losses = np.concatenate(history)
    if checkpoint is not None:
        save_checkpoint(checkpoint, state, losses, config)
    return TrainResult(state, losses)
