//! Graph passes, one per file, run in this order by [`optimize`].

pub mod const_fold;
pub mod dce;
pub mod infer;
pub mod split;
pub mod sym_values;

use crate::error::CompileError;
use crate::ir::Graph;

/// Shape inference (following shape arithmetic symbolically, folding constants as it goes), then
/// removal of folded and dead nodes.
pub fn optimize(g: &mut Graph) -> Result<(), CompileError> {
    infer::check_supported(g)?;
    infer::infer(g)?;
    const_fold::remove_folded(g);
    dce::eliminate(g);
    Ok(())
}
