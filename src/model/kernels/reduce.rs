//! CubeCL helpers shared by our kernels.

use burn_cubecl::cubecl;
use burn_cubecl::cubecl::prelude::*;

/// The sum of every thread's `v` over the cube, on every thread: a tree through `shared` (one
/// slot a thread; the cube's size along x a power of two, its other sizes 1).
#[cube]
pub(crate) fn cube_sum<F: Float>(v: F, shared: &mut SharedMemory<F>) -> F {
    let t = UNIT_POS_X as usize;
    shared[t] = v;
    sync_cube();
    // A runtime value, so the loop may change it.
    let mut stride = CUBE_DIM_X as usize / 2;
    while stride > 0 {
        if t < stride {
            let other = shared[t + stride];
            shared[t] += other;
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}
