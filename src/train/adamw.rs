//! AdamW as one fused, in-place pass over each weight, for the training loops of this module.
//!
//! candle's [`candle_nn::AdamW`] builds every update from about a dozen tensor ops per weight,
//! each allocating and filling a new tensor the size of the weight; on the small steps of head
//! training that was more than half of a step's time. [`FusedAdamW`] computes exactly the same
//! update (same formula, same defaults: [`ParamsAdamW`]) in one loop per weight that reads the
//! gradient and writes the weight and both moments in place, allocating nothing.
//!
//! The fused loop runs on CPU `f32` weights. Weights on a GPU take candle's own AdamW (the same
//! update as tensor ops, which run there), so training is device-agnostic; CPU weights of another
//! dtype are an error at construction. An optimiser owns its moments and is used by one thread.

use std::cell::RefCell;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Var, bail};
use candle_nn::{Optimizer, ParamsAdamW};

/// AdamW with decoupled weight decay, fused per weight on the CPU (see the module docs).
#[derive(Debug)]
pub struct FusedAdamW(Inner);

#[derive(Debug)]
enum Inner {
    Fused {
        vars: Vec<(Var, Moments)>,
        params: ParamsAdamW,
        step_t: i32,
    },
    /// candle's AdamW, for weights that are not on the CPU.
    Tensors(candle_nn::AdamW),
}

/// First and second moment estimates of one weight, row-major like it.
#[derive(Debug)]
struct Moments {
    first: Vec<f32>,
    second: Vec<f32>,
}

impl Optimizer for FusedAdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        if vars.iter().any(|var| !var.device().is_cpu()) {
            return Self::with_tensor_ops(vars, params);
        }
        let mut owned = Vec::with_capacity(vars.len());
        for var in vars {
            if var.dtype() != DType::F32 || !var.device().is_cpu() || !var.is_contiguous() {
                bail!("fused AdamW: weights must be contiguous f32 on the CPU, got {:?}", var.dtype());
            }
            let n = var.elem_count();
            owned.push((var, Moments { first: vec![0.0; n], second: vec![0.0; n] }));
        }
        Ok(Self(Inner::Fused { vars: owned, params, step_t: 0 }))
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let (vars, p, step_t) = match &mut self.0 {
            Inner::Fused { vars, params, step_t } => (vars, &*params, step_t),
            Inner::Tensors(adamw) => return adamw.step(grads),
        };
        *step_t += 1;
        let update = Update {
            lr: p.lr as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            beta1: p.beta1 as f32,
            beta2: p.beta2 as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(*step_t))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(*step_t))) as f32,
            eps: p.eps as f32,
        };
        for (var, moments) in vars {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let grad = grad.contiguous()?;
            var.as_tensor().inplace_op2(&grad, &UpdateOp { update, moments: RefCell::new(moments) })?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        match &self.0 {
            Inner::Fused { params, .. } => params.lr,
            Inner::Tensors(adamw) => adamw.learning_rate(),
        }
    }

    fn set_learning_rate(&mut self, lr: f64) {
        match &mut self.0 {
            Inner::Fused { params, .. } => params.lr = lr,
            Inner::Tensors(adamw) => adamw.set_learning_rate(lr),
        }
    }
}

impl FusedAdamW {
    /// The same optimiser as candle's tensor ops, on whatever device the weights are: what
    /// [`Optimizer::new`] picks for weights off the CPU.
    pub fn with_tensor_ops(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        Ok(Self(Inner::Tensors(candle_nn::AdamW::new(vars, params)?)))
    }
}

/// The step's scalars, as candle's AdamW derives them.
#[derive(Debug, Clone, Copy)]
struct Update {
    lr: f32,
    /// `1 − lr · weight_decay`.
    decay: f32,
    beta1: f32,
    beta2: f32,
    /// Bias corrections `1 / (1 − βᵗ)`.
    scale_m: f32,
    scale_v: f32,
    eps: f32,
}

impl Update {
    /// `θ ← θ·(1 − lr·λ) − lr · m̂ / (√v̂ + ε)` with the moments updated first, element by element.
    fn apply(&self, theta: &mut [f32], grad: &[f32], moments: &mut Moments) {
        let (b1, b2) = (self.beta1, self.beta2);
        let rows = theta.iter_mut().zip(grad).zip(moments.first.iter_mut().zip(moments.second.iter_mut()));
        for ((theta, &g), (m, v)) in rows {
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            let adjusted = (*m * self.scale_m) / ((*v * self.scale_v).sqrt() + self.eps);
            *theta = *theta * self.decay - adjusted * self.lr;
        }
    }
}

/// The in-place update of one weight by its gradient.
struct UpdateOp<'a> {
    update: Update,
    moments: RefCell<&'a mut Moments>,
}

impl InplaceOp2 for UpdateOp<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (Some((t0, t1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("fused AdamW: weight or gradient is not contiguous");
        };
        let (CpuStorage::F32(theta), CpuStorage::F32(grad)) = (s1, s2) else {
            bail!("fused AdamW: weight or gradient is not f32");
        };
        let mut moments = self.moments.borrow_mut();
        if t1 - t0 != g1 - g0 || moments.first.len() != t1 - t0 {
            bail!("fused AdamW: gradient of {} values for a weight of {}", g1 - g0, t1 - t0);
        }
        self.update.apply(&mut theta[t0..t1], &grad[g0..g1], &mut moments);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Same weights, same losses: after a few steps the fused loop holds the same weights as
    /// candle's AdamW, which is also the path weights off the CPU take (`with_tensor_ops`).
    #[test]
    fn matches_candle_adamw() -> Result<()> {
        let device = Device::Cpu;
        let start = Tensor::arange(0f32, 12f32, &device)?.affine(0.1, -0.5)?.reshape((3, 4))?;
        let target = Tensor::arange(0f32, 12f32, &device)?.sin()?.reshape((3, 4))?;
        let params = ParamsAdamW { lr: 0.05, weight_decay: 0.1, ..ParamsAdamW::default() };
        let (ours, theirs) = (Var::from_tensor(&start.copy()?)?, Var::from_tensor(&start.copy()?)?);
        let mut fused = FusedAdamW::new(vec![ours.clone()], params.clone())?;
        let mut reference = FusedAdamW::with_tensor_ops(vec![theirs.clone()], params)?;
        reference.set_learning_rate(0.05);
        assert_eq!(reference.learning_rate(), fused.learning_rate());
        for _ in 0..5 {
            fused.backward_step(&(ours.as_tensor() - &target)?.sqr()?.sum_all()?)?;
            reference.backward_step(&(theirs.as_tensor() - &target)?.sqr()?.sum_all()?)?;
        }
        let max_abs = |t: Tensor| t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>();
        // f32 rounding only: the two compute the same formula in a different order.
        let diff = max_abs((ours.as_tensor() - theirs.as_tensor())?)?;
        assert!(diff < 1e-5, "{diff}");
        let moved = max_abs((ours.as_tensor() - &start)?)?;
        assert!(moved > 0.01, "five steps moved the weights by {moved} only");
        assert!(FusedAdamW::new(vec![Var::zeros(2, DType::F64, &device)?], ParamsAdamW::default()).is_err());
        Ok(())
    }
}
