//! Graph passes, one per file, run in this order by [`optimize`].

pub mod const_fold;
pub mod dce;
pub mod infer;
pub mod split;
pub mod sym_values;

use crate::error::CompileError;
use crate::ir::Graph;

/// Shape inference (following shape arithmetic symbolically), constant folding, dead code removal.
pub fn optimize(g: &mut Graph) -> Result<(), CompileError> {
    infer::check_supported(g)?;
    infer::infer(g)?;
    const_fold::fold(g)?;
    dce::eliminate(g);
    Ok(())
}
