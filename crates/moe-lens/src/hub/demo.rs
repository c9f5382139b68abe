//! `demo`: the small model shipped in this crate's `data/demo` (see its README.md), with OLMoE's
//! routing shape, for a first try without downloading 14 GB.

use std::path::Path;

use super::{local_dir, ModelFiles, TOKENIZER_FILE};
use crate::error::{Error, Result};

/// The demo model's directory.
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo");

/// The demo model's files; an [`Error::MissingFile`] until `tests/setup-data.sh` or
/// `kernel-setup/install.sh` has copied OLMoE's tokenizer.json there.
pub(super) fn files(given: &str) -> Result<ModelFiles> {
    let dir = Path::new(DIR);
    if !dir.join(TOKENIZER_FILE).is_file() {
        return Err(Error::MissingFile {
            path: dir.join(TOKENIZER_FILE),
            what: "tokenizer.json",
            hint: "the demo model uses OLMoE's tokenizer, which is not shipped with it: run \
                   kernel-setup/install.sh or tests/setup-data.sh once (they copy it there)"
                .to_string(),
        });
    }
    local_dir(dir, given)
}
