//! `moe-lens sweep`: the importance sweep of one text and continuation (every expert the text routes
//! to, ablated one at a time), written as a ranked table in JSON and CSV; and the router
//! intervention options of `moe-lens trace`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use moe_lens::intervene::{Intervention, Interventions};
use moe_lens::lab::Lens;

use crate::ModelArgs;

/// Router interventions (each repeatable): `LAYER:EXPERTS[@START..END]`, `LAYER:EXPERT:DELTA[@…]`.
#[derive(Args, Debug, Clone, Default)]
pub struct InterventionArgs {
    /// Experts the router of a layer cannot choose, e.g. 14:27,35 or 14:27,35@0..5 (token positions).
    #[arg(long, value_name = "LAYER:EXPERTS[@START..END]")]
    pub ablate: Vec<String>,
    /// Exactly the k experts a layer's router chooses, e.g. 3:0,1,2,3,4,5,6,7.
    #[arg(long, value_name = "LAYER:EXPERTS[@START..END]")]
    pub force: Vec<String>,
    /// A number added to one expert's router logit before the softmax, e.g. 7:27:2.0.
    #[arg(long, value_name = "LAYER:EXPERT:DELTA[@START..END]")]
    pub bias: Vec<String>,
}

impl InterventionArgs {
    /// The interventions named, in the order ablate, force, bias (checked against the model when used).
    pub fn interventions(&self) -> moe_lens::Result<Interventions> {
        let mut out = Interventions::new();
        for (kind, specs) in [("ablate", &self.ablate), ("force", &self.force), ("bias", &self.bias)] {
            for s in specs {
                out = out.with(Intervention::parse(kind, s)?);
            }
        }
        Ok(out)
    }
}

#[derive(Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text (prompt) the continuation follows.
    #[arg(long)]
    text: String,
    /// The continuation whose log-probability ranks the experts (start it with a space, e.g. " Paris").
    #[arg(long)]
    continuation: String,
    /// Folder for sweep.json and sweep.csv (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Most tokens per batched forward pass.
    #[arg(long, default_value_t = 4096)]
    max_batch_tokens: usize,
    /// Also load the model in this dtype (e.g. f32 beside a bf16 run) and raise the noise floor to
    /// the two precisions' spread on the unmodified text.
    #[arg(long)]
    reference_dtype: Option<String>,
}

pub fn run_sweep(a: SweepArgs) -> anyhow::Result<()> {
    let lens = a.model.load()?;
    let opts = moe_lens::effects::SweepOptions { max_batch_tokens: a.max_batch_tokens };
    let mut sweep = lens.sweep_with(&a.text, &a.continuation, &opts)?;
    drop(lens); // one model in memory at a time
    if let Some(dtype) = &a.reference_dtype {
        // the same model, device and quantization, in another dtype
        let ropts = ModelArgs { dtype: Some(dtype.clone()), ..a.model.clone() }.options()?;
        let reference =
            Lens::load_with(&a.model.model_name(), &ropts).with_context(|| format!("loading the {dtype} reference"))?;
        sweep = sweep.with_reference(&reference)?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    moe_lens::fsutil::write_atomic(&a.out.join("sweep.json"), sweep.to_json()?.as_bytes())?;
    moe_lens::fsutil::write_atomic(&a.out.join("sweep.csv"), sweep.to_csv().as_bytes())?;
    println!("{sweep}");
    println!("wrote {} and {}", a.out.join("sweep.json").display(), a.out.join("sweep.csv").display());
    Ok(())
}
