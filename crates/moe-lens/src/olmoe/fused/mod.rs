//! Launchers for the fused bf16 CUDA kernels of `src/kernels/fused.cu` (PTX built by `build.rs` for
//! the build's `CUDA_COMPUTE_CAP`, with the nvcc candle's kernels are built with, and embedded).
//!
//! Each function takes contiguous CUDA tensors, checks dtypes and sizes, and returns new tensors;
//! everything stays on the device and on candle's one stream, so no call here synchronises.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::op::BackpropOp;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, Tensor};
use half::bf16;

use crate::error::{Error, Result};
use crate::intervene::RoutePlan;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const MODULE: &str = "moe_lens_fused";
/// Longest sequence the fused attention kernel takes (its keys and values sit in shared memory).
pub(crate) const ATT_MAX_T: usize = 64;
/// Head size the fused attention kernel is written for.
pub(crate) const ATT_D: usize = 128;
/// Most experts the router kernel takes (8 per lane of a warp).
pub(crate) const ROUTE_MAX_E: usize = 256;

fn err(msg: impl Into<String>) -> Error {
    Error::Device(format!("fused CUDA kernel: {}", msg.into()))
}

fn cuda_dev(t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        _ => Err(err("tensor is not on a CUDA device")),
    }
}

/// Device address of the first element of a contiguous tensor of `dtype`.
fn ptr(t: &Tensor, dtype: DType) -> Result<u64> {
    if t.dtype() != dtype {
        return Err(err(format!("expected {dtype:?}, got {:?}", t.dtype())));
    }
    let (st, layout) = t.storage_and_layout();
    if !layout.is_contiguous() {
        return Err(err("tensor is not contiguous"));
    }
    let off = layout.start_offset();
    let Storage::Cuda(c) = &*st else {
        return Err(err("tensor is not on a CUDA device"));
    };
    // The address stays valid after the guard is dropped: candle frees device memory in stream
    // order, after every kernel already queued on its one stream (this is how candle-nn's moe
    // kernels pass pointers too).
    let base = match dtype {
        DType::BF16 => {
            let s = c.as_cuda_slice::<bf16>()?;
            s.device_ptr(s.stream()).0
        }
        DType::F32 => {
            let s = c.as_cuda_slice::<f32>()?;
            s.device_ptr(s.stream()).0
        }
        DType::U32 => {
            let s = c.as_cuda_slice::<u32>()?;
            s.device_ptr(s.stream()).0
        }
        _ => return Err(err(format!("unsupported dtype {dtype:?}"))),
    };
    Ok(base + (off * dtype.size_in_bytes()) as u64)
}

fn wrap<T: candle_core::cuda_backend::CudaDType>(s: CudaSlice<T>, dev: &CudaDevice, shape: &[usize]) -> Tensor {
    let st = CudaStorage::wrap_cuda_slice(s, dev.clone());
    Tensor::from_storage(Storage::Cuda(st), shape, BackpropOp::none(), false)
}

fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| err(format!("{what} = {n} is too large")))
}

fn grid_for(total: usize, block: u32) -> u32 {
    let blocks = total.div_ceil(block as usize).max(1);
    blocks.min(16_384) as u32 // grid-stride loops cover the rest
}

/// RMSNorm over rows of `cols` values read from `x` (row `r` at element `r * x_stride + x_off`):
/// `bf16(w * bf16(x * rsqrt(mean(x²) + eps)))`. With `res`, `x + res` (rounded to bf16) is normed
/// and also returned. With `second` = `(cols2, off2, w2)`, a second segment of the same rows is
/// normed in the same launch (q and k). Outputs `[rows, cols]` (and `[rows, cols2]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm(
    x: &Tensor,
    rows: usize,
    cols: usize,
    x_stride: usize,
    x_off: usize,
    res: Option<&Tensor>,
    w: &Tensor,
    eps: f64,
    second: Option<(usize, usize, &Tensor)>,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let dev = cuda_dev(x)?;
    let need = |c: usize, off: usize| rows.saturating_sub(1) * x_stride + off + c;
    if x.elem_count() < need(cols, x_off) || w.elem_count() != cols {
        return Err(err("rmsnorm: sizes do not match"));
    }
    if res.is_some() && (x_stride != cols || x_off != 0 || second.is_some()) {
        return Err(err("rmsnorm: a residual needs a plain [rows, cols] input"));
    }
    if let Some((c2, o2, w2)) = second {
        if x.elem_count() < need(c2, o2) || w2.elem_count() != c2 {
            return Err(err("rmsnorm: second segment sizes do not match"));
        }
    }
    let xp = ptr(x, DType::BF16)?;
    let wp = ptr(w, DType::BF16)?;
    let rp = match res {
        Some(r) if r.elem_count() == rows * cols => ptr(r, DType::BF16)?,
        Some(_) => return Err(err("rmsnorm: residual size does not match")),
        None => 0,
    };
    // SAFETY (the three allocations): uninitialised device memory, never read before the kernel
    // below has written all of it: one block per row and segment writes every column of `out` (and
    // of `sum`, `out2` when present).
    let out = unsafe { dev.alloc::<bf16>(rows * cols) }?;
    let sum = match res {
        // SAFETY: as above, every element written by the kernel
        Some(_) => Some(unsafe { dev.alloc::<bf16>(rows * cols) }?),
        None => None,
    };
    let out2 = match second {
        // SAFETY: as above, every element written by the kernel's second segment
        Some((c2, _, _)) => Some(unsafe { dev.alloc::<bf16>(rows * c2) }?),
        None => None,
    };
    // 8 values per thread (one 16-byte load each) when the row fits one block and every row start
    // is 16-byte aligned; otherwise the general kernel
    let vec8 = cols.is_multiple_of(256)
        && cols / 8 <= 1024
        && x_stride.is_multiple_of(8)
        && x_off.is_multiple_of(8)
        && xp % 16 == 0
        && wp % 16 == 0
        && rp % 16 == 0
        && second
            .is_none_or(|(c2, o2, w2)| c2 == cols && o2 % 8 == 0 && ptr(w2, DType::BF16).is_ok_and(|p| p % 16 == 0));
    let kernel = if vec8 { "ml_rmsnorm8_bf16" } else { "ml_rmsnorm_bf16" };
    let threads = if vec8 { (cols / 8) as u32 } else { 256 };
    let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
    let op = out.device_ptr(out.stream()).0;
    let sp = sum.as_ref().map_or(0, |s| s.device_ptr(s.stream()).0);
    let o2p = out2.as_ref().map_or(0, |s| s.device_ptr(s.stream()).0);
    let (cols_i, stride_i, off_i) = (i32_of(cols, "cols")?, i32_of(x_stride, "stride")?, i32_of(x_off, "offset")?);
    let (w2p, c2_i, o2_i) = match second {
        Some((c2, o2, w2)) => (ptr(w2, DType::BF16)?, i32_of(c2, "cols")?, i32_of(o2, "offset")?),
        None => (0, 0, 0),
    };
    let eps = eps as f32;
    let mut b = func.builder();
    b.arg(&xp);
    b.arg(&rp);
    b.arg(&wp);
    b.arg(&op);
    b.arg(&sp);
    b.arg(&cols_i);
    b.arg(&stride_i);
    b.arg(&off_i);
    b.arg(&eps);
    b.arg(&w2p);
    b.arg(&o2p);
    b.arg(&c2_i);
    b.arg(&o2_i);
    let segments = if second.is_some() { 2 } else { 1 };
    let cfg = LaunchConfig { grid_dim: (rows as u32, segments, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: pointers are to live device buffers of the sizes checked above; the kernel reads
    // rows * cols values (strided) and writes rows * cols values into fresh buffers.
    unsafe { b.launch(cfg) }.w()?;
    let out = wrap(out, &dev, &[rows, cols]);
    let out2 = match (out2, second) {
        (Some(o), Some((c2, _, _))) => Some(wrap(o, &dev, &[rows, c2])),
        _ => None,
    };
    Ok((out, sum.map(|s| wrap(s, &dev, &[rows, cols])), out2))
}

/// Router: bf16 logits (element `(r, j)` at `r * stride + (off + j) * col`) → planar f32 routing
/// written at `packed` (`[rows * (2e + 2k)]`: logits, probs, weights, ids as floats), changed by
/// `plan` where interventions apply (the logits written stay the router's own).
#[allow(clippy::too_many_arguments)]
pub(crate) fn route(
    logits: &Tensor,
    stride: usize,
    col: usize,
    off: usize,
    rows: usize,
    e: usize,
    packed: &Tensor,
    k: usize,
    norm_topk: bool,
    plan: Option<&RoutePlan>,
) -> Result<()> {
    let dev = cuda_dev(logits)?;
    if e > ROUTE_MAX_E || k == 0 || k > e.min(32) {
        return Err(err(format!("route: {e} experts, top-{k} not supported")));
    }
    if packed.elem_count() != rows * (2 * e + 2 * k)
        || logits.elem_count() < rows.saturating_sub(1) * stride + (off + e - 1) * col + 1
    {
        return Err(err("route: sizes do not match"));
    }
    // the interventions' edits, uploaded (small: [rows, e] and [rows, k])
    let add = match plan {
        Some(p) if p.any_add && p.add.len() == rows * e => Some(Tensor::from_slice(&p.add, rows * e, logits.device())?),
        Some(p) if p.any_add => return Err(err("route: intervention plan of the wrong size")),
        _ => None,
    };
    let forced = match plan {
        Some(p) if p.any_force && p.forced.len() == rows * k => {
            let ids: Vec<u32> = p.forced.iter().map(|&v| u32::try_from(v).unwrap_or(u32::MAX)).collect();
            Some(Tensor::from_vec(ids, rows * k, logits.device())?)
        }
        Some(p) if p.any_force => return Err(err("route: intervention plan of the wrong size")),
        _ => None,
    };
    let ap = match &add {
        Some(t) => ptr(t, DType::F32)?,
        None => 0u64,
    };
    let fp = match &forced {
        Some(t) => ptr(t, DType::U32)?,
        None => 0u64,
    };
    let lp = ptr(logits, DType::BF16)? + (off * col * 2) as u64;
    let pp = ptr(packed, DType::F32)?;
    let func = dev.get_or_load_custom_func("ml_route_bf16", MODULE, PTX)?;
    let (stride_i, rows_i, e_i, k_i, norm_i) =
        (i32_of(stride, "stride")?, i32_of(rows, "rows")?, e as i32, k as i32, i32::from(norm_topk));
    let col_i = i32_of(col, "column stride")?;
    let mut b = func.builder();
    b.arg(&lp);
    b.arg(&stride_i);
    b.arg(&col_i);
    b.arg(&pp);
    b.arg(&rows_i);
    b.arg(&e_i);
    b.arg(&k_i);
    b.arg(&norm_i);
    b.arg(&ap);
    b.arg(&fp);
    let cfg = LaunchConfig { grid_dim: (rows.div_ceil(4) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: one warp per row reads e logits (and, when given, e entries of `add` and k of
    // `forced`, both sized rows × e and rows × k above; forced ids are checked < e in the kernel)
    // and writes its entries of the four sections of `packed`, whose size is checked above.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

/// SwiGLU on `n` rows of `gu` (element `(r, c)` at `r * stride + off + c * col`, columns in `e`
/// blocks of `[gate i | up i]`) → `[e, n, i]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn swiglu(
    gu: &Tensor,
    n: usize,
    e: usize,
    i: usize,
    stride: usize,
    off: usize,
    col: usize,
) -> Result<Tensor> {
    let dev = cuda_dev(gu)?;
    if gu.elem_count() < n.saturating_sub(1) * stride + off + (e * 2 * i - 1) * col + 1 {
        return Err(err("swiglu: size does not match"));
    }
    let gp = ptr(gu, DType::BF16)?;
    let total = n * e * i;
    // SAFETY: uninitialised device memory; the kernel's grid-stride loop writes all `total` values
    // before anything reads them.
    let out = unsafe { dev.alloc::<bf16>(total) }?;
    let op = out.device_ptr(out.stream()).0;
    let (n_i, e_i, i_i) = (i32_of(n, "rows")?, i32_of(e, "experts")?, i32_of(i, "intermediate")?);
    let (s_i, o_i, c_i) = (i32_of(stride, "stride")?, i32_of(off, "offset")?, i32_of(col, "column stride")?);
    // contiguous columns: 8 values per thread, 16-byte loads and stores (the same values)
    let vec8 =
        col == 1 && i.is_multiple_of(8) && stride.is_multiple_of(8) && off.is_multiple_of(8) && gp.is_multiple_of(16);
    let func = dev.get_or_load_custom_func(if vec8 { "ml_swiglu8_bf16" } else { "ml_swiglu_bf16" }, MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&gp);
    b.arg(&op);
    b.arg(&n_i);
    b.arg(&e_i);
    b.arg(&i_i);
    b.arg(&s_i);
    b.arg(&o_i);
    if !vec8 {
        b.arg(&c_i);
    }
    let threads = if vec8 { total / 8 } else { total };
    let cfg = LaunchConfig { grid_dim: (grid_for(threads, 256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: reads 2 * total and writes total bf16 values, sizes checked above (the 8-value kernel:
    // pointers and strides 16-byte aligned, checked here; fresh allocations are).
    unsafe { b.launch(cfg) }.w()?;
    Ok(wrap(out, &dev, &[e, n, i]))
}

/// Mixes expert outputs with the router's weights (see `ml_combine_bf16`). `packed` is one layer's
/// planar routing of `n` rows and `e` experts. `y` is `[e, n, h]` (every expert on every row) when
/// `pos` is `None`, else `[rows, h]` with pair `n * k + j` at row `pos[n * k + j]` (i32).
#[allow(clippy::too_many_arguments)]
pub(crate) fn combine(
    y: &Tensor,
    packed: &Tensor,
    pos: Option<&Tensor>,
    n: usize,
    e: usize,
    h: usize,
    k: usize,
) -> Result<Tensor> {
    let dev = cuda_dev(y)?;
    if packed.elem_count() != n * (2 * e + 2 * k) || !y.elem_count().is_multiple_of(h.max(1)) {
        return Err(err("combine: sizes do not match"));
    }
    let rows = y.elem_count() / h.max(1);
    let pp = match pos {
        None if rows == e * n => 0,
        Some(p) if p.elem_count() == n * k => ptr(p, DType::U32)?,
        _ => return Err(err("combine: expert rows do not match")),
    };
    let yp = ptr(y, DType::BF16)?;
    let base = ptr(packed, DType::F32)?;
    let wp = base + (2 * n * e * 4) as u64;
    let ip = wp + (n * k * 4) as u64;
    let total = n * h;
    // SAFETY: uninitialised device memory; the kernel's grid-stride loop writes all `n * h` outputs
    // before anything reads them.
    let out = unsafe { dev.alloc::<bf16>(total) }?;
    let op = out.device_ptr(out.stream()).0;
    let func = dev.get_or_load_custom_func("ml_combine_bf16", MODULE, PTX)?;
    let (n_i, h_i, k_i) = (i32_of(n, "rows")?, i32_of(h, "hidden")?, k as i32);
    let mut b = func.builder();
    b.arg(&yp);
    b.arg(&wp);
    b.arg(&ip);
    b.arg(&pp);
    b.arg(&op);
    b.arg(&n_i);
    b.arg(&h_i);
    b.arg(&k_i);
    let cfg = LaunchConfig { grid_dim: (grid_for(total, 256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: expert ids come from the router kernel (< e) and positions from `group`, so every
    // row read is inside y.
    unsafe { b.launch(cfg) }.w()?;
    Ok(wrap(out, &dev, &[n, h]))
}

/// The `n * k` (token, expert) pairs of one layer grouped by expert (see [`group`]).
pub(crate) struct Grouped {
    /// The tokens' rows, `[e, cap, h]` bf16, zero padded.
    pub xg: Tensor,
    /// Each pair's row in `xg` (`[n * k]` u32).
    pub pos: Tensor,
    /// Rows per expert in `xg`: the busiest expert's count (read back to the host), rounded up to 8.
    pub cap: usize,
    /// Each expert's count (`[e]` u32, on the device).
    pub counts: Tensor,
}

/// Groups the `n * k` (token, expert) pairs of one layer by expert.
pub(crate) fn group(x: &Tensor, packed: &Tensor, n: usize, e: usize, k: usize) -> Result<Grouped> {
    let dev = cuda_dev(x)?;
    let (rows, h) = x.dims2()?;
    if rows != n || packed.elem_count() != n * (2 * e + 2 * k) {
        return Err(err("group: sizes do not match"));
    }
    let pairs = n * k;
    let ids = ptr(packed, DType::F32)? + ((2 * n * e + n * k) * 4) as u64;
    let counts = dev.alloc_zeros::<u32>(e)?;
    let cp = counts.device_ptr(counts.stream()).0;
    let pairs_i = i32_of(pairs, "pairs")?;
    let func = dev.get_or_load_custom_func("ml_bucket_count", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&ids);
    b.arg(&pairs_i);
    b.arg(&cp);
    let cfg = LaunchConfig { grid_dim: (grid_for(pairs, 256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: ids are expert indices < e written by the router kernel; counts has e entries.
    unsafe { b.launch(cfg) }.w()?;
    let counts_t = wrap(counts, &dev, &[e]);
    let cap = counts_t.max(0)?.to_scalar::<u32>()? as usize; // one small read-back per layer
    let cap = cap.max(1).div_ceil(8) * 8;
    let fill = dev.alloc_zeros::<u32>(e)?;
    let fp = fill.device_ptr(fill.stream()).0;
    // SAFETY: uninitialised device memory; `ml_bucket_gather` (one block per pair) writes every
    // pair's position before `combine` reads them.
    let pos = unsafe { dev.alloc::<u32>(pairs) }?;
    let posp = pos.device_ptr(pos.stream()).0;
    let xg = dev.alloc_zeros::<bf16>(e * cap * h)?;
    let xgp = xg.device_ptr(xg.stream()).0;
    let xp = ptr(x, DType::BF16)?;
    let (k_i, h_i, c_i) = (k as i32, i32_of(h, "hidden")?, i32_of(cap, "capacity")?);
    let func = dev.get_or_load_custom_func("ml_bucket_gather", MODULE, PTX)?;
    let mut b = func.builder();
    b.arg(&ids);
    b.arg(&xp);
    b.arg(&fp);
    b.arg(&posp);
    b.arg(&xgp);
    b.arg(&k_i);
    b.arg(&h_i);
    b.arg(&c_i);
    let cfg = LaunchConfig { grid_dim: (pairs as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: each expert gets at most cap slots (cap >= its count), so every write is inside xg.
    unsafe { b.launch(cfg) }.w()?;
    drop(fill);
    Ok(Grouped { xg: wrap(xg, &dev, &[e, cap, h]), pos: wrap(pos, &dev, &[pairs]), cap, counts: counts_t })
}

/// NeoX RoPE of `x` `[B, heads, T, D]` (bf16) for positions `offset .. offset + T`, rounded as the
/// fused attention rounds (see `ml_rope_bf16`); `cos`/`sin` are the bf16 tables `[>= offset + T, D/2]`.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> Result<Tensor> {
    let dev = cuda_dev(x)?;
    let (b, h, t, d) = x.dims4()?;
    let x = x.contiguous()?;
    let half = d / 2;
    if d % 2 != 0 || cos.dims2()? != sin.dims2()? || cos.dim(1)? != half || cos.dim(0)? < offset + t {
        return Err(err("rope: tables do not match the input"));
    }
    let (xp, cp, sp) =
        (ptr(&x, DType::BF16)?, ptr(&cos.contiguous()?, DType::BF16)?, ptr(&sin.contiguous()?, DType::BF16)?);
    let total = x.elem_count();
    // SAFETY: written in full by ml_rope_bf16 below (one value per thread of the grid-stride loop).
    let out = unsafe { dev.alloc::<bf16>(total) }?;
    let op = out.device_ptr(out.stream()).0;
    let func = dev.get_or_load_custom_func("ml_rope_bf16", MODULE, PTX)?;
    let (rows_i, t_i, d_i, off_i) =
        (i32_of(b * h, "rows")?, i32_of(t, "tokens")?, i32_of(d, "head size")?, i32_of(offset, "offset")?);
    let mut bld = func.builder();
    bld.arg(&xp);
    bld.arg(&op);
    bld.arg(&cp);
    bld.arg(&sp);
    bld.arg(&rows_i);
    bld.arg(&t_i);
    bld.arg(&d_i);
    bld.arg(&off_i);
    let cfg = LaunchConfig { grid_dim: (grid_for(total, 256), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: reads total values of x and rows offset .. offset + t of the tables (checked above),
    // writes total values of out.
    unsafe { bld.launch(cfg) }.w()?;
    Ok(wrap(out, &dev, &[b, h, t, d]))
}

/// Causal attention for short prefills without a cache: `q`, `k`, `v` hold rows `b * t + j` of
/// `heads * 128` values at element `row * stride` (q and k normed, not rotated); `cos`/`sin` are the
/// bf16 rope tables `[>= t, 64]`; `lens` (u32 `[b]`) masks padded keys. Returns `[b * t, heads * 128]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: (&Tensor, usize, usize),
    k: (&Tensor, usize, usize),
    v: (&Tensor, usize, usize),
    cos: &Tensor,
    sin: &Tensor,
    lens: Option<&Tensor>,
    batch: usize,
    t: usize,
    heads: usize,
    eager: bool,
) -> Result<Tensor> {
    let dev = cuda_dev(q.0)?;
    if t == 0 || t > ATT_MAX_T {
        return Err(err(format!("attention: {t} positions (1..={ATT_MAX_T})")));
    }
    let width = heads * ATT_D;
    for (x, stride, off) in [q, k, v] {
        if x.elem_count() < (batch * t - 1) * stride + off + width {
            return Err(err("attention: q/k/v sizes do not match"));
        }
    }
    if cos.dim(0)? < t || cos.dim(1)? != ATT_D / 2 || sin.dims() != cos.dims() {
        return Err(err("attention: rope tables do not match"));
    }
    let lp = match lens {
        Some(l) if l.elem_count() == batch => ptr(l, DType::U32)?,
        Some(_) => return Err(err("attention: lengths do not match the batch")),
        None => 0,
    };
    let qp = ptr(q.0, DType::BF16)? + (q.2 * 2) as u64;
    let kp = ptr(k.0, DType::BF16)? + (k.2 * 2) as u64;
    let vp = ptr(v.0, DType::BF16)? + (v.2 * 2) as u64;
    let cp = ptr(cos, DType::BF16)?;
    let sp = ptr(sin, DType::BF16)?;
    // SAFETY: uninitialised device memory; one block per (sequence, head) writes that head's
    // `t` rows of 128 values, so all `batch * t * width` are written before anything reads them.
    let out = unsafe { dev.alloc::<bf16>(batch * t * width) }?;
    let op = out.device_ptr(out.stream()).0;
    let func = dev.get_or_load_custom_func("ml_attn_bf16", MODULE, PTX)?;
    let (qs, ks, vs) = (i32_of(q.1, "stride")?, i32_of(k.1, "stride")?, i32_of(v.1, "stride")?);
    let (t_i, h_i) = (t as i32, i32_of(heads, "heads")?);
    let scale = (ATT_D as f32).powf(-0.5);
    let eager_i = i32::from(eager);
    let mut b = func.builder();
    b.arg(&qp);
    b.arg(&kp);
    b.arg(&vp);
    b.arg(&qs);
    b.arg(&ks);
    b.arg(&vs);
    b.arg(&cp);
    b.arg(&sp);
    b.arg(&lp);
    b.arg(&op);
    b.arg(&t_i);
    b.arg(&h_i);
    b.arg(&scale);
    b.arg(&eager_i);
    // one block per (sequence, head, chunk of 8 queries): ATT_WARPS warps, a query each
    let chunks = t.div_ceil(8) as u32;
    let cfg =
        LaunchConfig { grid_dim: ((batch * heads) as u32, chunks, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: sizes checked above; t <= ATT_MAX_T fits the kernel's shared arrays.
    unsafe { b.launch(cfg) }.w()?;
    Ok(wrap(out, &dev, &[batch * t, width]))
}

/// A fresh f32 buffer `[dims]` (contents undefined until a kernel writes it).
pub(crate) fn alloc_f32(like: &Tensor, dims: &[usize]) -> Result<Tensor> {
    let dev = cuda_dev(like)?;
    let n: usize = dims.iter().product();
    // SAFETY: uninitialised device memory, as this function's contract says; its one user, the
    // fused forward, has the router kernel write every layer's block in full before any is read.
    let s = unsafe { dev.alloc::<f32>(n) }?;
    Ok(wrap(s, &dev, dims))
}

/// The name our kernels give a ggml block type (`ml_dequant_{name}_bf16`, `ml_qmm_{name}`), for the
/// types they read.
fn kernel_type(t: GgmlDType) -> Option<&'static str> {
    match t {
        GgmlDType::Q8_0 => Some("q8_0"),
        GgmlDType::Q4K => Some("q4_k"),
        GgmlDType::Q6K => Some("q6_k"),
        GgmlDType::Q4_0 => Some("q4_0"),
        GgmlDType::Q5K => Some("q5_k"),
        _ => None,
    }
}

/// The bytes of one row of `c` values of block type `t`, after checking that `c` is whole blocks
/// and a multiple of 8 (our kernels take 8 values per thread).
fn row_bytes(t: GgmlDType, c: usize) -> Result<usize> {
    let bs = t.block_size();
    if !c.is_multiple_of(bs) || !c.is_multiple_of(8) {
        return Err(err(format!("rows of {c} values are not whole {t:?} blocks of {bs}")));
    }
    Ok(c / bs * t.type_size())
}

/// Experts `e0 .. e0 + ne` of stacked quantized tensors, dequantized into one tensor
/// `[ne, rows, C]` of `dtype` (bf16, or f32 for float32 models): each part `(q, off)` (`q`
/// `[E, R, C]`) fills rows `off .. off + R` of every expert (gate and up side by side make the
/// `[ne, 2I, H]` layout of the bf16 path).
pub(crate) fn dequant_experts_as(
    parts: &[(&QTensor, usize)],
    e0: usize,
    ne: usize,
    rows: usize,
    dtype: DType,
) -> Result<Tensor> {
    let Some((first, _)) = parts.first() else { return Err(err("dequant: no parts")) };
    let Device::Cuda(dev) = first.device() else { return Err(err("dequant: weights are not on a CUDA device")) };
    let c = first.shape().dims().last().copied().unwrap_or(0);
    // SAFETY (both allocations): uninitialised device memory; the launches below write rows
    // `off .. off + r` of every expert for each part, and the callers' parts cover all `rows`
    // (gate rows then up rows, or down alone), so every value is written before it is read.
    let (out_bf16, out_f32) = match dtype {
        DType::BF16 => (Some(unsafe { dev.alloc::<bf16>(ne * rows * c) }?), None),
        DType::F32 => (None, Some(unsafe { dev.alloc::<f32>(ne * rows * c) }?)),
        other => return Err(err(format!("dequant: to {other:?} (bf16 or f32 only)"))),
    };
    let (op, suffix) = match (&out_bf16, &out_f32) {
        (Some(o), _) => (o.device_ptr(o.stream()).0, "bf16"),
        (_, Some(o)) => (o.device_ptr(o.stream()).0, "f32"),
        _ => return Err(err("dequant: no output")),
    };
    for &(q, off) in parts {
        let (e, r, cq) = q.shape().dims3()?;
        let name = kernel_type(q.dtype()).ok_or_else(|| err(format!("dequant: no kernel for {:?}", q.dtype())))?;
        if cq != c || e0 + ne > e || off + r > rows {
            return Err(err(format!(
                "dequant: [{e}, {r}, {cq}] does not fit experts {e0}+{ne} rows {off}+{r} of {rows}×{c}"
            )));
        }
        let row_bytes = row_bytes(q.dtype(), c)?;
        if r > 65_535 {
            return Err(err(format!("dequant: {r} rows per expert: not supported")));
        }
        let func = dev.get_or_load_custom_func(&format!("ml_dequant_{name}_{suffix}"), MODULE, PTX)?;
        // one block row per matrix row (grid y ≤ 65,535), each thread 8 values
        let per_launch = (65_535 / r).max(1);
        let threads = (c / 8).div_ceil(32).clamp(1, 8) as u32 * 32;
        let mut s0 = 0;
        while s0 < ne {
            let n = per_launch.min(ne - s0);
            let src = q.device_ptr()? as u64 + ((e0 + s0) * r * row_bytes) as u64;
            let dst = op + (s0 * rows * c * dtype.size_in_bytes()) as u64;
            let (n_i, r_i, c_i) = (i32_of(n, "experts")?, i32_of(r, "rows")?, i32_of(c, "columns")?);
            let (rb_i, rows_i, off_i) = (row_bytes as i64, i32_of(rows, "rows")?, i32_of(off, "row offset")?);
            let mut b = func.builder();
            b.arg(&src);
            b.arg(&dst);
            b.arg(&n_i);
            b.arg(&r_i);
            b.arg(&c_i);
            b.arg(&rb_i);
            b.arg(&rows_i);
            b.arg(&off_i);
            let grid_x = (c / 8).div_ceil(threads as usize) as u32;
            let cfg =
                LaunchConfig { grid_dim: (grid_x, (n * r) as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: reads n * r rows of row_bytes from expert e0 + s0 on (inside q, checked above)
            // and writes rows off .. off + r of experts s0 .. s0 + n of out.
            unsafe { b.launch(cfg) }.w()?;
            s0 += n;
        }
    }
    Ok(match (out_bf16, out_f32) {
        (Some(o), _) => wrap(o, &dev, &[ne, rows, c]),
        (_, Some(o)) => wrap(o, &dev, &[ne, rows, c]),
        _ => return Err(err("dequant: no output")),
    })
}

/// [`dequant_experts_as`] to bf16.
pub(crate) fn dequant_experts(parts: &[(&QTensor, usize)], e0: usize, ne: usize, rows: usize) -> Result<Tensor> {
    dequant_experts_as(parts, e0, ne, rows, DType::BF16)
}

/// Quantized experts on grouped rows, reading the blocks inside the matmul (see `ml_qmm_*`): for
/// the `[E, C, K]` bf16 rows `xg` of each expert (`counts` `[E]` u32 of them real, the rest padding),
/// each part `(q, off)` (`q` `[E, R, K]`) writes `xg · W_eᵀ` into columns `off .. off + R` of the
/// `[E, C, width]` bf16 result. Padding rows of the result are zero.
pub(crate) fn qmm(parts: &[(&QTensor, usize)], xg: &Tensor, counts: &Tensor, width: usize) -> Result<Tensor> {
    let dev = cuda_dev(xg)?;
    let (e, cap, kdim) = xg.dims3()?;
    if counts.elem_count() != e {
        return Err(err("qmm: counts do not match the experts"));
    }
    let xp = ptr(xg, DType::BF16)?;
    let cp = ptr(counts, DType::U32)?;
    let out = dev.alloc_zeros::<bf16>(e * cap * width)?;
    let op = out.device_ptr(out.stream()).0;
    const WARPS: usize = 8; // QMM_WARPS
                            // rows of the activations in shared memory at a time: at most QMM_TILE (8), and 32 KiB
    let tile = (16_384 / kdim.max(1)).clamp(1, 8);
    let smem = u32::try_from(tile * kdim * 2)
        .ok()
        .filter(|&b| b <= 48 * 1024)
        .ok_or_else(|| err(format!("qmm: rows of {kdim} values do not fit shared memory")))?;
    for &(q, off) in parts {
        let (qe, r, qk) = q.shape().dims3()?;
        if qe != e || qk != kdim || off + r > width {
            return Err(err(format!(
                "qmm: weights [{qe}, {r}, {qk}] do not fit rows [{e}, {cap}, {kdim}] into columns {off}+{r} of {width}"
            )));
        }
        let name = kernel_type(q.dtype()).ok_or_else(|| err(format!("qmm: no kernel for {:?}", q.dtype())))?;
        let rb = row_bytes(q.dtype(), kdim)?;
        let src = q.device_ptr()? as u64;
        let func = dev.get_or_load_custom_func(&format!("ml_qmm_{name}"), MODULE, PTX)?;
        let (eb, rb_i) = ((r * rb) as i64, rb as i64);
        let (r_i, k_i, c_i, w_i, o_i) = (
            i32_of(r, "rows")?,
            i32_of(kdim, "columns")?,
            i32_of(cap, "capacity")?,
            i32_of(width, "width")?,
            i32_of(off, "offset")?,
        );
        let mut b = func.builder();
        b.arg(&src);
        b.arg(&eb);
        b.arg(&rb_i);
        b.arg(&r_i);
        b.arg(&k_i);
        b.arg(&xp);
        b.arg(&cp);
        b.arg(&c_i);
        b.arg(&op);
        b.arg(&w_i);
        b.arg(&o_i);
        let tile_i = tile as i32;
        b.arg(&tile_i);
        let grid_y = u32::try_from(e).map_err(|_| err("qmm: too many experts"))?;
        let cfg = LaunchConfig {
            grid_dim: (r.div_ceil(WARPS) as u32, grid_y, 1),
            block_dim: (32 * WARPS as u32, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: q holds e experts of r rows of rb bytes (its shape and block type, checked above);
        // xg holds e * cap rows of kdim bf16 and the kernel reads rows below min(counts[e], cap),
        // tile of them at a time into smem = tile * kdim bf16 of shared memory;
        // out holds e * cap rows of width, written at columns off .. off + r <= width.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(wrap(out, &dev, &[e, cap, width]))
}

#[cfg(test)]
mod tests;
