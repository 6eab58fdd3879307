"""JAX: ``jax.grad`` for the attack's input gradient, and the stateless training step of
Keras' JAX trainer: ``train_step(state, data) -> (logs, new_state)`` where the state is
(trainable, non-trainable, optimizer, metrics) variable values. The method's own code
(augmentation, attack, loss terms, metrics) runs unchanged inside `keras.StatelessScope`s
that map every variable to its value in the state; whatever it assigns (BatchNorm moving
statistics, the `SeedGenerator`'s state, the metrics) is read back into the new state."""

from __future__ import annotations

import jax
import keras


class _RecordingScope(keras.StatelessScope):
    """A stateless scope that starts from ``base`` (a parent scope's mapping) and remembers
    which variables were assigned in it."""

    def __init__(self, base):
        super().__init__()
        self.state_mapping = dict(base)
        self.assigned = {}

    def add_update(self, update):
        super().add_update(update)
        self.assigned[id(update[0])] = update[0]


def _outer_mapping():
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    outer = get_stateless_scope()
    return {} if outer is None else outer.state_mapping


def input_gradient(fn, x):
    """d fn(x) / dx: ``jax.grad`` of a function of the input alone (the model's variables
    are constants of it, read from the enclosing stateless scope). What ``fn`` assigns
    (BatchNorm statistics of a model in training mode) comes out of the gradient's trace
    and is assigned after it, to the enclosing scope (or to the variables, eagerly)."""
    base = _outer_mapping()
    assigned = {}

    def traced(x):
        with _RecordingScope(base) as scope:
            value = fn(x)
        assigned.update(scope.assigned)
        return value, {key: scope.state_mapping[key] for key in scope.assigned}

    grad, updates = jax.grad(traced, has_aux=True)(x)
    for key, value in updates.items():
        assigned[key].assign(value)
    return grad


def _updated(scope, variables, values):
    """The values of ``variables`` after ``scope``: what it assigned, else ``values``."""
    out = []
    for variable, value in zip(variables, values):
        new = scope.get_current_value(variable)
        out.append(value if new is None else new)
    return out


def train_step(method, state, data):
    """One stateless step of an `AdversarialMethod` (the teacher's variables are
    non-trainable: they pass through unchanged)."""
    trainable, non_trainable, optimizer_values, metric_values = state
    optimizer = method.optimizer
    tv, ntv = method.trainable_variables, method.non_trainable_variables
    ov, mv = optimizer.variables, method.metrics_variables

    def scope(t, n, o, m):
        return keras.StatelessScope(
            state_mapping=[*zip(tv, t), *zip(ntv, n), *zip(ov, o), *zip(mv, m)])

    with scope(trainable, non_trainable, optimizer_values, metric_values) as s:
        x, y, x_adv, ctx = method.attack_phase(data)
    non_trainable = _updated(s, ntv, non_trainable)  # the seed's state has advanced
    metric_values = _updated(s, mv, metric_values)
    loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def loss_fn(t, n):
        with scope(t, n, optimizer_values, metric_values) as s:
            terms = method.loss_terms(x, x_adv, y, ctx)
            loss = optimizer.scale_loss(terms["loss"]) if loss_scaling else terms["loss"]
        return loss, (terms, _updated(s, ntv, n))

    (_, (terms, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, non_trainable)
    with scope(trainable, non_trainable, optimizer_values, metric_values):
        loss_scale = optimizer.dynamic_scale.value if loss_scaling else None
        grads = method.with_weight_decay(grads, trainable, loss_scale=loss_scale)
    trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, grads, trainable)
    with scope(trainable, non_trainable, optimizer_values, metric_values) as s:
        logs = method.update_metrics(terms, y)
    return logs, (trainable, non_trainable, optimizer_values, _updated(s, mv, metric_values))


def cond(pred, true_fn, false_fn):
    """Both branches run in their own stateless scopes (a ``lax.cond`` branch may not assign
    the enclosing scope's variables); outputs and assigned values are chosen by ``pred``."""
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    outer = get_stateless_scope()
    if outer is None:  # eager, outside a step: a concrete predicate
        return true_fn() if bool(pred) else false_fn()
    results, mappings = [], []
    for branch in (true_fn, false_fn):
        with keras.StatelessScope() as inner:
            inner.state_mapping = dict(outer.state_mapping)
            results.append(branch())
        mappings.append(inner.state_mapping)
    for key in set(mappings[0]) | set(mappings[1]):
        before = outer.state_mapping.get(key)
        chosen = [m.get(key, before) for m in mappings]
        if chosen[0] is before and chosen[1] is before:
            continue
        outer.state_mapping[key] = jax.numpy.where(pred, chosen[0], chosen[1])
    return jax.tree_util.tree_map(lambda a, b: jax.numpy.where(pred, a, b), *results)


def test_step(method, state, data):
    """Stateless evaluation step: ``(trainable, non_trainable, metrics) -> (logs, state)``."""
    trainable, non_trainable, metric_values = state
    tv, ntv = method.trainable_variables, method.non_trainable_variables
    mv = method.metrics_variables
    mapping = [*zip(tv, trainable), *zip(ntv, non_trainable), *zip(mv, metric_values)]
    with keras.StatelessScope(state_mapping=mapping) as s:
        logs = method.evaluate_batch(data)
    return logs, (trainable, _updated(s, ntv, non_trainable), _updated(s, mv, metric_values))
