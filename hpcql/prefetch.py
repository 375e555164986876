"""``prefetch(a, i)``: a numba intrinsic that asks the CPU for ``a[i]``'s cache line ahead of use
(into every cache level); ``prefetch_l2(a, i)`` the same into L2 and below, not L1.

Both lower to LLVM's ``llvm.prefetch`` (a read; locality 3, every cache level, or 2): a hint
that never faults and changes no result, so kernels may issue it for addresses
they will gather a few iterations later. Random gathers (a random MDP's
successors spread over the whole value vector) otherwise stall on one cache
miss after another once the out-of-order window is full; see
``tabular.kernels`` for where it is used. ``prefetch_l2`` suits data needed
later than the next few iterations (``tabular.tiles`` warms the next tile's
value block with it), which would only evict what L1 holds now.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _prefetch_signature(array, index, locality: int):
    """The typing and code of a prefetch hint with LLVM locality ``locality`` (3: every level, x86
    prefetcht0; 2: L2 and below, prefetcht1); None for arguments it does not take."""
    if (not isinstance(array, types.Array) or array.ndim != 1 or array.layout != "C"
            or not isinstance(index, types.Integer)):
        return None
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        idx = context.cast(builder, args[1], signature.args[1], types.intp)
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [idx], wraparound=False)
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(locality), i32(1)])  # read, locality, data
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch(typingctx, array, index):  # noqa: ARG001 (numba passes the typing context)
    """Hint that ``array[index]`` (a 1-d C-contiguous array, an integer index in bounds) is read soon."""
    return _prefetch_signature(array, index, 3)


@intrinsic
def prefetch_l2(typingctx, array, index):  # noqa: ARG001
    """Hint that ``array[index]`` is read later: fetch its line into L2, not L1."""
    return _prefetch_signature(array, index, 2)
