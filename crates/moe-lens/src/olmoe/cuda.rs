//! The model on a GPU: routing handed to the spy from one host copy ([`Olmoe::deliver`], used by
//! every off-CPU forward), and the fused CUDA bf16 forward (`Olmoe::forward_fused`,
//! `Attention::forward_fused`), which runs the same maths as the reference forward in `mod.rs`
//! through our kernels (`fused/`). Only the latter needs a CUDA build.

use candle_core::{Device, Tensor};

use super::Olmoe;
#[cfg(any(feature = "cuda", moe_lens_cuda))]
use super::{fused, linear, Attention, Rope};
use crate::error::{Error, Result};
#[cfg(any(feature = "cuda", moe_lens_cuda))]
use crate::intervene::RoutePlan;
#[cfg(any(feature = "cuda", moe_lens_cuda))]
use crate::spy::LayerSelection;
use crate::spy::{RouterEvent, RouterSpy, Step};

impl Olmoe {
    /// Hands routing copied to the host to `spy`: `host` holds, for each of `layers` in turn, the
    /// planar routing of `[logits | probs | weights | ids]` (f32). Events carry CPU tensors.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver(
        &self,
        spy: &mut dyn RouterSpy,
        host: &[f32],
        layers: &[usize],
        step: Step,
        b: usize,
        t: usize,
        offset: usize,
        lengths: Option<&[usize]>,
    ) -> Result<usize> {
        let (e, k, n) = (self.cfg.num_experts, self.cfg.num_experts_per_tok, b * t);
        let p = 2 * e + 2 * k;
        for (j, &l) in layers.iter().enumerate() {
            let block = host
                .get(j * n * p..(j + 1) * n * p)
                .ok_or_else(|| Error::Spy(format!("routing of layer {l} is missing from the host copy")))?;
            // planar: logits, probs, weights, ids
            let (logits, rest) = block.split_at(n * e);
            let (probs, rest) = rest.split_at(n * e);
            let (weights, ids) = rest.split_at(n * k);
            let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
            let cpu = Device::Cpu;
            let layer = self.layers.get(l).ok_or_else(|| Error::Spy(format!("no layer {l}")))?;
            spy.on_route(&RouterEvent {
                layer: l,
                name: &layer.name,
                step,
                batch: b,
                seq_len: t,
                offset,
                lengths,
                logits: &Tensor::from_slice(logits, (n, e), &cpu)?,
                probs: &Tensor::from_slice(probs, (n, e), &cpu)?,
                top_k: &Tensor::from_vec(ids, (n, k), &cpu)?,
                weights: &Tensor::from_slice(weights, (n, k), &cpu)?,
            })?;
        }
        Ok(layers.len())
    }

    /// The fused CUDA bf16 forward (no KV cache): RMSNorm with the residual add, one q/k/v matmul,
    /// one attention kernel for short inputs, one router kernel writing every layer's routing into
    /// one buffer, SwiGLU and the expert mix as single kernels; one host copy of the routing at the end.
    #[cfg(any(feature = "cuda", moe_lens_cuda))]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_fused(
        &self,
        input_ids: &Tensor,
        b: usize,
        t: usize,
        lengths: Option<&[usize]>,
        step: Step,
        mut spy: Option<&mut dyn RouterSpy>,
        selection: &LayerSelection,
        plans: &[Option<RoutePlan>],
    ) -> Result<Tensor> {
        let (hs, e, k) = (self.cfg.hidden_size, self.cfg.num_experts, self.cfg.num_experts_per_tok);
        let n = b * t;
        let p = 2 * e + 2 * k;
        let mut x = self.embed_tokens.index_select(&input_ids.flatten_all()?, 0)?; // [N, hidden]
        let lens = match lengths {
            Some(l) => Some(Tensor::from_vec(l.iter().map(|&v| v as u32).collect::<Vec<_>>(), l.len(), &self.device)?),
            None => None,
        };
        // the attention kernel takes heads of 128, no grouped kv heads, up to ATT_MAX_T positions;
        // otherwise candle's ops run, and they need the mask
        let cfg = &self.cfg;
        let fused_attention =
            t <= fused::ATT_MAX_T && cfg.num_attention_heads == cfg.num_key_value_heads && cfg.head_dim == fused::ATT_D;
        let mask = if fused_attention { None } else { self.mask(b, t, 0, lengths)? };
        let routing = fused::alloc_f32(&x, &[self.layers.len(), n * p])?; // every layer's routing
        let mut pending: Option<Tensor> = None; // the last expert output, not yet added
        for (l, layer) in self.layers.iter().enumerate() {
            let ln = &layer.input_layernorm;
            let (h, sum, _) = fused::rmsnorm(&x, n, hs, hs, 0, pending.as_ref(), &ln.weight, ln.eps, None)?;
            if let Some(s) = sum {
                x = s;
            }
            let att = layer.self_attn.forward_fused(
                &h,
                b,
                t,
                &self.rope,
                lens.as_ref(),
                mask.as_ref(),
                self.tuning.eager_scores,
            )?; // [N, hidden]
            let ln = &layer.post_attention_layernorm;
            let (h, sum, _) = fused::rmsnorm(&x, n, hs, hs, 0, Some(&att), &ln.weight, ln.eps, None)?;
            x = sum.ok_or_else(|| Error::Device("fused RMSNorm returned no sum".into()))?;
            let packed = routing.get(l)?; // this layer's routing, a view
            let plan = plans.get(l).and_then(Option::as_ref);
            pending = Some(layer.mlp.moe_fused(&h, &packed, &self.tuning, plan)?);
        }
        let (out, _, _) = fused::rmsnorm(&x, n, hs, hs, 0, pending.as_ref(), &self.norm.weight, self.norm.eps, None)?;
        if let Some(s) = spy.as_mut() {
            let wanted = selection.layers(self.layers.len());
            if b > 1 && !wanted.is_empty() {
                // batches: only the choices and weights come to the host (one copy); logits and
                // probabilities stay on the device as views, read only by spies that ask for them
                let l_all = self.layers.len();
                let choices = routing.narrow(1, 2 * n * e, 2 * n * k)?.contiguous()?; // [L, 2Nk]
                let host: Vec<f32> = choices.flatten_all()?.to_vec1()?;
                let cpu = Device::Cpu;
                for &l in &wanted {
                    let block = host
                        .get(l * 2 * n * k..(l + 1) * 2 * n * k)
                        .ok_or_else(|| Error::Spy(format!("routing of layer {l} is missing")))?;
                    let (weights, ids) = block.split_at(n * k);
                    let ids: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
                    let dev_rows = routing.get(l)?;
                    let layer = self.layers.get(l).ok_or_else(|| Error::Spy(format!("no layer {l} of {l_all}")))?;
                    s.on_route(&RouterEvent {
                        layer: l,
                        name: &layer.name,
                        step,
                        batch: b,
                        seq_len: t,
                        offset: 0,
                        lengths,
                        logits: &dev_rows.narrow(0, 0, n * e)?.reshape((n, e))?,
                        probs: &dev_rows.narrow(0, n * e, n * e)?.reshape((n, e))?,
                        top_k: &Tensor::from_vec(ids, (n, k), &cpu)?,
                        weights: &Tensor::from_slice(weights, (n, k), &cpu)?,
                    })?;
                }
            } else if wanted.len() == self.layers.len() {
                // the one copy to the host: all layers' routing at once
                let host: Vec<f32> = routing.flatten_all()?.to_vec1()?;
                self.deliver(&mut **s, &host, &wanted, step, b, t, 0, lengths)?;
            } else if !wanted.is_empty() {
                let host: Vec<f32> = routing.flatten_all()?.to_vec1()?;
                let mut picked = Vec::with_capacity(wanted.len() * n * p);
                for &l in &wanted {
                    let block = host
                        .get(l * n * p..(l + 1) * n * p)
                        .ok_or_else(|| Error::Spy(format!("routing of layer {l} is missing")))?;
                    picked.extend_from_slice(block);
                }
                self.deliver(&mut **s, &picked, &wanted, step, b, t, 0, lengths)?;
            }
            s.on_step_end(step)?;
        }
        Ok(out.reshape((b, t, hs))?) // [B, T, hidden]
    }
}

#[cfg(any(feature = "cuda", moe_lens_cuda))]
impl Attention {
    /// The fused CUDA bf16 path: `x` `[B*T, hidden]` → `[B*T, hidden]` (no KV cache, no clamp);
    /// `eager` as [`Tuning::eager_scores`](super::Tuning).
    #[allow(clippy::too_many_arguments)]
    fn forward_fused(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        rope: &Rope,
        lens: Option<&Tensor>,
        mask: Option<&Tensor>,
        eager: bool,
    ) -> Result<Tensor> {
        let n = b * t;
        let Some(qkv_w) = &self.qkv else {
            return Err(Error::Device("fused attention without a fused q/k/v weight".into()));
        };
        let (hd, kvd) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let width = hd + 2 * kvd;
        let qkv = x.matmul(&qkv_w.t()?)?; // [N, hd + 2 kvd]

        // q and k norms in one launch: [N, hd] and [N, kvd]
        let (q, _, k) = fused::rmsnorm(
            &qkv,
            n,
            hd,
            width,
            0,
            None,
            &self.q_norm.weight,
            self.q_norm.eps,
            Some((kvd, hd, &self.k_norm.weight)),
        )?;
        let k = k.ok_or_else(|| Error::Device("fused RMSNorm returned no k".into()))?;
        if t <= fused::ATT_MAX_T && self.heads == self.kv_heads && self.head_dim == fused::ATT_D {
            let out = fused::attention(
                (&q, hd, 0),
                (&k, kvd, 0),
                (&qkv, width, hd + kvd),
                &rope.cos_d,
                &rope.sin_d,
                lens,
                b,
                t,
                self.heads,
                eager,
            )?;
            return linear(&out, &self.o_proj); // [N, hidden]
        }
        let v = qkv.narrow(1, hd + kvd, kvd)?.reshape((b, t, kvd))?; // [B, T, kvd]
        let out = self.attend(q.reshape((b, t, hd))?, k.reshape((b, t, kvd))?, v, rope, 0, mask, None, eager, true)?;
        Ok(out.reshape((n, hd))?) // [N, hidden]
    }
}
