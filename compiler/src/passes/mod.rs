//! Graph passes, one per file, run in this order by [`optimize`].

pub mod attention;
pub mod const_fold;
pub mod dce;
pub mod gelu_tanh;
pub mod gemm;
pub mod grouped_query;
pub mod identity_cast;
pub mod infer;
pub mod kv_cache;
pub mod last_position;
pub mod merge_products;
pub mod pattern;
pub mod product_bias;
pub mod product_residual;
pub mod quantize;
pub mod reshape_chain;
pub mod rms_norm;
pub mod rotate_half;
pub mod scaled_softmax;
pub mod silu;
pub mod split;
pub mod sym_values;
pub mod transposed_weight;
pub mod unit_transpose;

use crate::error::CompileError;
use crate::ir::Graph;

/// Shape inference (following shape arithmetic symbolically, folding constants as it goes), then
/// removal of folded nodes and of casts to the type a value already has, fusion of transposed
/// weights into their products, products over grouped-query KV heads without the repeat, RMS
/// normalisations as one node, transposes of unit axes as reshapes (views), chains of reshapes as
/// one, and removal of dead nodes.
pub fn optimize(g: &mut Graph) -> Result<(), CompileError> {
    infer::check_supported(g)?;
    infer::infer(g)?;
    const_fold::remove_folded(g);
    identity_cast::bypass(g);
    transposed_weight::fuse(g);
    grouped_query::fold(g);
    rms_norm::fuse(g);
    unit_transpose::to_reshape(g);
    reshape_chain::collapse(g);
    dce::eliminate(g);
    Ok(())
}

/// Rewrites for the CPU backend: with `merge_weights`, plain `Gemm`s as products and bias adds,
/// which the weight passes then pack or quantize, and products of one input by several weights as
/// one product and a split (both make new weights, which a GPU plan of the same bundle would not
/// share); and
/// fusions whose kernels only the CPU backend has: rotary embeddings, SiLU (gated or not), tanh
/// GELU, attention's scale-mask-softmax, and then attention as a whole (scores, softmax and the
/// product with v), as one step each. Run after [`optimize`] for CPU targets; a GPU program keeps
/// the separate ops, which all have GPU kernels.
pub fn fuse_for_cpu(g: &mut Graph, merge_weights: bool) {
    if merge_weights {
        gemm::to_matmul(g);
        merge_products::merge(g);
    }
    rotate_half::fuse(g);
    silu::fuse(g);
    silu::read_halves(g);
    gelu_tanh::fuse(g);
    scaled_softmax::fuse(g);
    dce::eliminate(g);
    attention::fuse(g);
    reshape_chain::collapse(g);
    dce::eliminate(g);
}
