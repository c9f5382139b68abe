//! The launchers of `fused/mod.rs` against candle's CPU code (ggml's reference arithmetic); needs a
//! GPU (each test skips without one).

use super::*;

/// Block types our kernels read, all of them: each test covers every one.
const TYPES: [GgmlDType; 5] = [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q4_0, GgmlDType::Q5K];

/// Quantized on the CPU by candle (ggml's reference code), then its bytes put on the GPU as
/// the loader does.
fn quantized_pair(src: &Tensor, t: GgmlDType, dev: &Device) -> Result<(QTensor, QTensor)> {
    let q_cpu = QTensor::quantize(src, t)?;
    let q_gpu = QTensor::new(candle_core::quantized::QStorage::from_data(q_cpu.data()?, dev, t)?, src.shape().clone())?;
    Ok((q_cpu, q_gpu))
}

fn test_values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.754_877_7 + seed).sin() * 2.0 + ((i * 31 % 17) as f32 - 8.0) * 0.05).collect()
}

/// Our dequantizing kernels against candle's CPU dequantization (ggml's reference arithmetic)
/// of the same blocks: bit for bit in f32, and rounded to bf16, for whole tensors and for an
/// expert range written into one half of a wider tensor (the gate/up layout).
#[test]
fn dequant_kernels_match_candles_cpu_dequantization() -> Result<()> {
    let Ok(dev) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return Ok(());
    };
    let (e, r, c) = (5, 6, 512);
    let src = Tensor::from_vec(test_values(e * r * c, 0.0), (e, r, c), &Device::Cpu)?;
    let bits = |t: &Tensor| -> Result<Vec<u16>> {
        Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<bf16>()?.iter().map(|x| x.to_bits()).collect())
    };
    for t in TYPES {
        let (q_cpu, q_gpu) = quantized_pair(&src, t, &dev)?;
        let want32: Vec<u32> =
            q_cpu.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect();
        let got32: Vec<u32> = dequant_experts_as(&[(&q_gpu, 0)], 0, e, r, DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let diff = got32.iter().zip(&want32).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{t:?} f32: {diff} of {} values differ", want32.len());
        let want = bits(&q_cpu.dequantize(&Device::Cpu)?.to_dtype(DType::BF16)?)?; // [e, r, c]
        assert!(kernel_type(t).is_some(), "{t:?}");
        let got = bits(&dequant_experts(&[(&q_gpu, 0)], 0, e, r)?)?;
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(diff, 0, "{t:?}: {diff} of {} values differ", want.len());
        // experts 2..4 as the second half of [2, 2r, c]; the first half from the same tensor's experts 2..4
        let got = bits(&dequant_experts(&[(&q_gpu, 0), (&q_gpu, r)], 2, 2, 2 * r)?)?;
        for ee in 0..2 {
            let w = &want[(2 + ee) * r * c..(3 + ee) * r * c];
            let g = &got[ee * 2 * r * c..(ee + 1) * 2 * r * c];
            assert!(g[..r * c] == *w && g[r * c..] == *w, "{t:?}: expert {} in the gate/up layout", 2 + ee);
        }
        // out of range is an error, not a read past the tensor
        assert!(dequant_experts(&[(&q_gpu, 0)], 4, 2, r).is_err());
    }
    Ok(())
}

/// Our rope kernel against the same arithmetic on the CPU (f32 products of bf16 values, each
/// product and the sum rounded to bf16 once): bit for bit, at a position offset.
#[test]
fn rope_kernel_rounds_each_product_and_the_sum_once() -> Result<()> {
    let Ok(dev) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return Ok(());
    };
    let (b, h, t, d, offset, positions) = (2, 3, 5, 128, 7, 16);
    let half = d / 2;
    let x = Tensor::from_vec(test_values(b * h * t * d, 0.3), (b, h, t, d), &Device::Cpu)?.to_dtype(DType::BF16)?;
    let ang: Vec<f32> =
        (0..positions * half).map(|i| ((i / half) as f32) * 0.37f32.powi((i % half) as i32 % 7)).collect();
    let cos = Tensor::from_vec(ang.iter().map(|a| a.cos()).collect::<Vec<f32>>(), (positions, half), &Device::Cpu)?
        .to_dtype(DType::BF16)?;
    let sin = Tensor::from_vec(ang.iter().map(|a| a.sin()).collect::<Vec<f32>>(), (positions, half), &Device::Cpu)?
        .to_dtype(DType::BF16)?;
    let got: Vec<u16> = rope(&x.to_device(&dev)?, &cos.to_device(&dev)?, &sin.to_device(&dev)?, offset)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<bf16>()?
        .iter()
        .map(|v| v.to_bits())
        .collect();
    let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (cs, ss): (Vec<f32>, Vec<f32>) =
        (cos.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?, sin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?);
    let r = |v: f32| bf16::from_f32(v).to_f32();
    let mut diff = 0;
    for (i, g) in got.iter().enumerate() {
        let (dd, tt) = (i % d, (i / d) % t);
        let (c, s) = (cs[(offset + tt) * half + dd % half], ss[(offset + tt) * half + dd % half]);
        let rot = if dd < half { -xs[i + half] } else { xs[i - half] };
        let want = bf16::from_f32(r(xs[i] * c) + r(rot * s)).to_bits();
        diff += usize::from(*g != want);
    }
    assert_eq!(diff, 0, "{diff} of {} values differ", got.len());
    assert!(
        rope(&x.to_device(&dev)?, &cos.to_device(&dev)?, &sin.to_device(&dev)?, positions).is_err(),
        "positions past the table are refused"
    );
    Ok(())
}

/// The quantized matmul for short inputs against the CPU: candle dequantizes the same blocks
/// (ggml's reference arithmetic), the weights and rows are rounded to bf16 as the kernel's
/// products are, and the sums are taken in f64. Every block type, experts with no rows, more
/// rows than one register tile (8), both halves of a gate/up result; the padding rows stay 0.
#[test]
fn qmm_matches_the_cpu_on_every_block_type() -> Result<()> {
    let Ok(dev) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return Ok(());
    };
    let (e, r, kdim, cap) = (6, 40, 512, 24);
    // rows per expert: none, one, a tile, more than two tiles, ...
    let counts: Vec<u32> = vec![0, 1, 8, 19, 3, 24];
    let xs = test_values(e * cap * kdim, 1.3);
    let mut xv = vec![0f32; e * cap * kdim];
    for (ee, &n) in counts.iter().enumerate() {
        for c in 0..n as usize {
            let o = (ee * cap + c) * kdim;
            xv[o..o + kdim].copy_from_slice(&xs[o..o + kdim]);
        }
    }
    let x = Tensor::from_vec(xv, (e, cap, kdim), &Device::Cpu)?.to_dtype(DType::BF16)?;
    let x_rounded: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let xg = x.to_device(&dev)?;
    let counts_t = Tensor::new(counts.as_slice(), &dev)?;
    for t in TYPES {
        let src = Tensor::from_vec(test_values(e * r * kdim, 0.7), (e, r, kdim), &Device::Cpu)?;
        let (q_cpu, q_gpu) = quantized_pair(&src, t, &dev)?;
        let w: Vec<f32> =
            q_cpu.dequantize(&Device::Cpu)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        // the same weights in both halves of a [e, cap, 2r] result
        let got: Vec<f32> = qmm(&[(&q_gpu, 0), (&q_gpu, r)], &xg, &counts_t, 2 * r)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        let (mut worst, mut checked) = (0f64, 0usize);
        for ee in 0..e {
            for c in 0..cap {
                for half in 0..2 {
                    for rr in 0..r {
                        let g = got[(ee * cap + c) * 2 * r + half * r + rr] as f64;
                        if c >= counts[ee] as usize {
                            assert_eq!(g, 0.0, "{t:?}: padding row {c} of expert {ee}");
                            continue;
                        }
                        let want: f64 = (0..kdim)
                            .map(|v| w[(ee * r + rr) * kdim + v] as f64 * x_rounded[(ee * cap + c) * kdim + v] as f64)
                            .sum();
                        // one bf16 rounding of the result (2^-8 relative), and f32 sums
                        let tol = want.abs() * 2f64.powi(-8) + 1e-3;
                        worst = worst.max((g - want).abs() / tol);
                        checked += 1;
                    }
                }
            }
        }
        eprintln!("{t:?}: {checked} values, worst error {worst:.3} of the tolerance");
        assert!(worst <= 1.0, "{t:?}: an output is off by {worst:.2}× the tolerance");
        assert!(qmm(&[(&q_gpu, r)], &xg, &counts_t, r).is_err(), "{t:?}: columns past the result are refused");
    }
    Ok(())
}
