"""bea: backward error analysis of SGD for multitask and continual learning.

The public surface: bind a model to a loss, then compute gradients,
Hessian-vector products, Gram matrices, Lie brackets and the terms of the
modified losses and vector fields that SGD follows.

    >>> import torch, bea
    >>> model = torch.nn.Linear(3, 1)
    >>> loss = bea.bind(model, torch.nn.functional.mse_loss, torch.ones(4, 3), torch.zeros(4, 1))
    >>> params = bea.params_of(model)
    >>> sorted(bea.grad(loss, params))
    ['bias', 'weight']
"""

from bea._tree import (
    tree_add,
    tree_axpy,
    tree_dot,
    tree_map,
    tree_norm,
    tree_ravel,
    tree_scale,
    tree_sub,
    tree_unravel,
    tree_zeros_like,
)
from bea.derivatives import (
    BracketResult,
    flat_dense_hessian,
    grad,
    gram,
    gram_by_layer,
    hvp,
    layer_groups,
    lie_bracket,
    per_layer_inner,
    per_layer_norm,
    select_names,
    value_and_grad,
    vector_field_bracket,
)
from bea.expansion import (
    heavy_ball_step,
    modified_field,
    modified_field_terms,
    preconditioned_step,
    terms_function,
)
from bea.functional import BoundLoss, bind, params_of
from bea.modified import (
    MultitaskTerms,
    gd_steps,
    igr,
    modified_loss,
    multitask_terms,
    order_effect,
    sequential_modified_field,
    sequential_modified_terms,
)
from bea.ode import flow, scipy_flow
from bea.verify import check_drift

__version__ = "0.1.0"

__all__ = [
    "BoundLoss",
    "BracketResult",
    "MultitaskTerms",
    "bind",
    "check_drift",
    "flat_dense_hessian",
    "flow",
    "gd_steps",
    "grad",
    "gram",
    "gram_by_layer",
    "heavy_ball_step",
    "hvp",
    "igr",
    "layer_groups",
    "lie_bracket",
    "modified_field",
    "modified_field_terms",
    "modified_loss",
    "multitask_terms",
    "order_effect",
    "params_of",
    "per_layer_inner",
    "per_layer_norm",
    "preconditioned_step",
    "scipy_flow",
    "select_names",
    "sequential_modified_field",
    "sequential_modified_terms",
    "terms_function",
    "tree_add",
    "tree_axpy",
    "tree_dot",
    "tree_map",
    "tree_norm",
    "tree_ravel",
    "tree_scale",
    "tree_sub",
    "tree_unravel",
    "tree_zeros_like",
    "value_and_grad",
    "vector_field_bracket",
]
