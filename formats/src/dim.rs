//! Tensor dimensions that may be symbolic: a number, a named symbol (`batch`, `sequence`), or an
//! expression over symbols (`past_sequence + sequence`, `3*hidden`), kept in a normal form so two
//! dims that are equal compare equal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// One dimension of a shape, or one element of a shape-valued tensor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Known(i64),
    Sym(Arc<Poly>),
}

/// A polynomial over atoms with integer coefficients; the empty monomial is the constant term.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Poly(BTreeMap<Vec<Atom>, i64>);

/// A factor of a monomial: a named symbol, or an operation polynomials cannot express.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Atom {
    Var(Arc<str>),
    Op(Arc<(OpKind, Dim, Dim)>),
}

/// Operations kept opaque inside an [`Atom`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum OpKind {
    FloorDiv,
    Mod,
    Min,
    Max,
}

impl Poly {
    fn constant(c: i64) -> Poly {
        let mut m = BTreeMap::new();
        if c != 0 {
            m.insert(Vec::new(), c);
        }
        Poly(m)
    }

    fn atom(a: Atom) -> Poly {
        Poly(BTreeMap::from([(vec![a], 1)]))
    }

    fn add(&self, other: &Poly, sign: i64) -> Poly {
        let mut m = self.0.clone();
        for (k, v) in &other.0 {
            let e = m.entry(k.clone()).or_insert(0);
            *e = e.wrapping_add(v.wrapping_mul(sign));
            if *e == 0 {
                m.remove(k);
            }
        }
        Poly(m)
    }

    fn mul(&self, other: &Poly) -> Poly {
        let mut out = Poly::default();
        for (ka, va) in &self.0 {
            for (kb, vb) in &other.0 {
                let mut k = ka.clone();
                k.extend(kb.iter().cloned());
                k.sort();
                out = out.add(&Poly(BTreeMap::from([(k, va.wrapping_mul(*vb))])), 1);
            }
        }
        out
    }

    fn into_dim(self) -> Dim {
        match self.0.len() {
            0 => Dim::Known(0),
            1 if self.0.contains_key(&Vec::new()) => Dim::Known(self.0[&Vec::new()]),
            _ => Dim::Sym(Arc::new(self)),
        }
    }
}

impl Dim {
    /// A named symbol.
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(Arc::new(Poly::atom(Atom::Var(name.into()))))
    }

    /// The number, when the dim is known.
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            Dim::Sym(_) => None,
        }
    }

    pub fn is_known(&self) -> bool {
        matches!(self, Dim::Known(_))
    }

    fn poly(&self) -> Poly {
        match self {
            Dim::Known(v) => Poly::constant(*v),
            Dim::Sym(p) => (**p).clone(),
        }
    }

    fn op(kind: OpKind, a: &Dim, b: &Dim) -> Dim {
        Poly::atom(Atom::Op(Arc::new((kind, a.clone(), b.clone())))).into_dim()
    }

    pub fn add(&self, o: &Dim) -> Dim {
        match (self, o) {
            (Dim::Known(a), Dim::Known(b)) => Dim::Known(a.wrapping_add(*b)),
            _ => self.poly().add(&o.poly(), 1).into_dim(),
        }
    }

    pub fn sub(&self, o: &Dim) -> Dim {
        match (self, o) {
            (Dim::Known(a), Dim::Known(b)) => Dim::Known(a.wrapping_sub(*b)),
            _ => self.poly().add(&o.poly(), -1).into_dim(),
        }
    }

    pub fn mul(&self, o: &Dim) -> Dim {
        match (self, o) {
            (Dim::Known(a), Dim::Known(b)) => Dim::Known(a.wrapping_mul(*b)),
            _ => self.poly().mul(&o.poly()).into_dim(),
        }
    }

    /// Floor division; `None` when dividing a known value by zero.
    pub fn floor_div(&self, o: &Dim) -> Option<Dim> {
        match (self, o) {
            (_, Dim::Known(0)) => None,
            (Dim::Known(a), Dim::Known(b)) => {
                Some(Dim::Known(a.div_euclid(*b) - i64::from(a.rem_euclid(*b) != 0 && *b < 0)))
            }
            _ if self == o => Some(Dim::Known(1)),
            _ => Some(self.exact_div(o).unwrap_or_else(|| Dim::op(OpKind::FloorDiv, self, o))),
        }
    }

    /// `self / o` when `o` is one term `c*m` that divides every term of `self` exactly.
    fn exact_div(&self, o: &Dim) -> Option<Dim> {
        let q = o.poly();
        if q.0.len() != 1 {
            return None;
        }
        let (m, c) = q.0.iter().next().map(|(k, c)| (k.clone(), *c))?;
        let mut out = BTreeMap::new();
        for (k, v) in &self.poly().0 {
            if v % c != 0 {
                return None;
            }
            out.insert(remove_factors(k, &m)?, v / c);
        }
        Some(Poly(out).into_dim())
    }

    /// Euclidean remainder; `None` when dividing a known value by zero.
    pub fn rem(&self, o: &Dim) -> Option<Dim> {
        match (self, o) {
            (_, Dim::Known(0)) => None,
            (Dim::Known(a), Dim::Known(b)) => Some(Dim::Known(a.rem_euclid(*b))),
            _ if self == o => Some(Dim::Known(0)),
            _ => Some(Dim::op(OpKind::Mod, self, o)),
        }
    }

    pub fn minimum(&self, o: &Dim) -> Dim {
        match (self, o) {
            (Dim::Known(a), Dim::Known(b)) => Dim::Known(*a.min(b)),
            _ if self == o => self.clone(),
            _ => Dim::op(OpKind::Min, self, o),
        }
    }

    pub fn maximum(&self, o: &Dim) -> Dim {
        match (self, o) {
            (Dim::Known(a), Dim::Known(b)) => Dim::Known(*a.max(b)),
            _ if self == o => self.clone(),
            _ => Dim::op(OpKind::Max, self, o),
        }
    }

    /// Product of dims.
    pub fn product<'a>(dims: impl IntoIterator<Item = &'a Dim>) -> Dim {
        dims.into_iter().fold(Dim::Known(1), |acc, d| acc.mul(d))
    }

    /// The value with every symbol looked up; `None` when a symbol is missing or a division is by zero.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        match self {
            Dim::Known(v) => Some(*v),
            Dim::Sym(p) => {
                let mut total: i64 = 0;
                for (mono, c) in &p.0 {
                    let mut term = *c;
                    for atom in mono {
                        term = term.checked_mul(atom.eval(lookup)?)?;
                    }
                    total = total.checked_add(term)?;
                }
                Some(total)
            }
        }
    }

    /// A sound interval `[lo, hi]` for this dim given an interval for each symbol; `None` when a
    /// symbol has no interval or the bound overflows. Opaque operations are bounded conservatively.
    pub fn bounds(&self, lookup: &dyn Fn(&str) -> Option<(i64, i64)>) -> Option<(i64, i64)> {
        match self {
            Dim::Known(v) => Some((*v, *v)),
            Dim::Sym(p) => {
                let (mut lo, mut hi) = (0i64, 0i64);
                for (mono, &c) in &p.0 {
                    let (mut mlo, mut mhi) = (1i64, 1i64);
                    for atom in mono {
                        let (alo, ahi) = atom.bounds(lookup)?;
                        let cands = [
                            mlo.checked_mul(alo)?,
                            mlo.checked_mul(ahi)?,
                            mhi.checked_mul(alo)?,
                            mhi.checked_mul(ahi)?,
                        ];
                        mlo = *cands.iter().min()?;
                        mhi = *cands.iter().max()?;
                    }
                    let (a, b) = (c.checked_mul(mlo)?, c.checked_mul(mhi)?);
                    lo = lo.checked_add(a.min(b))?;
                    hi = hi.checked_add(a.max(b))?;
                }
                Some((lo, hi))
            }
        }
    }

    /// Replaces symbols by the dims `subst` gives (symbols it leaves out stay).
    pub fn substitute(&self, subst: &dyn Fn(&str) -> Option<Dim>) -> Dim {
        match self {
            Dim::Known(_) => self.clone(),
            Dim::Sym(p) => {
                let mut total = Dim::Known(0);
                for (mono, c) in &p.0 {
                    let mut term = Dim::Known(*c);
                    for atom in mono {
                        term = term.mul(&atom.substitute(subst));
                    }
                    total = total.add(&term);
                }
                total
            }
        }
    }

    /// Names of the symbols this dim depends on.
    pub fn symbols(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        self.collect_symbols(&mut out);
        out
    }

    fn collect_symbols(&self, out: &mut BTreeSet<String>) {
        if let Dim::Sym(p) = self {
            for atom in p.0.keys().flatten() {
                match atom {
                    Atom::Var(v) => {
                        out.insert(v.to_string());
                    }
                    Atom::Op(op) => {
                        op.1.collect_symbols(out);
                        op.2.collect_symbols(out);
                    }
                }
            }
        }
    }
}

fn remove_factors(mono: &[Atom], factors: &[Atom]) -> Option<Vec<Atom>> {
    let mut rest = mono.to_vec();
    for f in factors {
        let pos = rest.iter().position(|a| a == f)?;
        rest.remove(pos);
    }
    Some(rest)
}

impl Atom {
    fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        match self {
            Atom::Var(v) => lookup(v),
            Atom::Op(op) => {
                let (a, b) = (op.1.eval(lookup)?, op.2.eval(lookup)?);
                match op.0 {
                    OpKind::FloorDiv => Dim::Known(a).floor_div(&Dim::Known(b))?.known(),
                    OpKind::Mod => (b != 0).then(|| a.rem_euclid(b)),
                    OpKind::Min => Some(std::cmp::min(a, b)),
                    OpKind::Max => Some(std::cmp::max(a, b)),
                }
            }
        }
    }

    fn bounds(&self, lookup: &dyn Fn(&str) -> Option<(i64, i64)>) -> Option<(i64, i64)> {
        match self {
            Atom::Var(v) => lookup(v),
            Atom::Op(op) => {
                let ((alo, ahi), (blo, bhi)) = (op.1.bounds(lookup)?, op.2.bounds(lookup)?);
                match op.0 {
                    // Sizes: a non-negative numerator over a divisor of at least 1.
                    OpKind::FloorDiv if alo >= 0 && blo >= 1 => Some((alo / bhi, ahi / blo)),
                    OpKind::FloorDiv if alo >= 0 && blo >= 0 => Some((0, ahi)),
                    OpKind::FloorDiv => None,
                    OpKind::Mod if blo >= 1 => Some((0, bhi - 1)),
                    OpKind::Mod => None,
                    OpKind::Min => Some((alo.min(blo), ahi.min(bhi))),
                    OpKind::Max => Some((alo.max(blo), ahi.max(bhi))),
                }
            }
        }
    }

    fn substitute(&self, subst: &dyn Fn(&str) -> Option<Dim>) -> Dim {
        match self {
            Atom::Var(v) => subst(v).unwrap_or_else(|| Dim::sym(v)),
            Atom::Op(op) => {
                let (a, b) = (op.1.substitute(subst), op.2.substitute(subst));
                match op.0 {
                    OpKind::FloorDiv => a.floor_div(&b).unwrap_or_else(|| Dim::op(OpKind::FloorDiv, &a, &b)),
                    OpKind::Mod => a.rem(&b).unwrap_or_else(|| Dim::op(OpKind::Mod, &a, &b)),
                    OpKind::Min => a.minimum(&b),
                    OpKind::Max => a.maximum(&b),
                }
            }
        }
    }
}

impl From<i64> for Dim {
    fn from(v: i64) -> Dim {
        Dim::Known(v)
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Known(v as i64)
    }
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Atom::Var(v) => f.write_str(v),
            Atom::Op(op) => match op.0 {
                OpKind::FloorDiv => write!(f, "({} / {})", op.1, op.2),
                OpKind::Mod => write!(f, "({} % {})", op.1, op.2),
                OpKind::Min => write!(f, "min({}, {})", op.1, op.2),
                OpKind::Max => write!(f, "max({}, {})", op.1, op.2),
            },
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(v) => write!(f, "{v}"),
            Dim::Sym(p) => {
                // Highest-degree terms first, constant last: `past + seq + 1`.
                let mut terms: Vec<_> = p.0.iter().collect();
                terms.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
                for (i, (mono, c)) in terms.into_iter().enumerate() {
                    let (sign, mag) = if *c < 0 { ("-", c.unsigned_abs()) } else { ("+", *c as u64) };
                    match (i, sign) {
                        (0, "-") => f.write_str("-")?,
                        (0, _) => {}
                        _ => write!(f, " {sign} ")?,
                    }
                    if mono.is_empty() {
                        write!(f, "{mag}")?;
                        continue;
                    }
                    if mag != 1 {
                        write!(f, "{mag}*")?;
                    }
                    for (j, a) in mono.iter().enumerate() {
                        if j > 0 {
                            f.write_str("*")?;
                        }
                        write!(f, "{a}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_form_makes_equal_dims_equal() {
        let (s, p) = (Dim::sym("seq"), Dim::sym("past"));
        assert_eq!(s.add(&p), p.add(&s));
        assert_eq!(s.add(&p).sub(&p), s);
        assert_eq!(s.mul(&Dim::Known(12)).floor_div(&Dim::Known(12)).unwrap(), s);
        assert_eq!(s.mul(&p).floor_div(&s).unwrap(), p);
        assert_eq!(s.sub(&s), Dim::Known(0));
        assert_eq!(format!("{}", s.add(&p).add(&Dim::Known(1))), "past + seq + 1");
    }

    #[test]
    fn eval_and_substitute() {
        let d = Dim::maximum(&Dim::sym("seq").mul(&Dim::Known(3)).add(&Dim::Known(1)), &Dim::Known(5));
        assert_eq!(d.eval(&|n| (n == "seq").then_some(4)), Some(13));
        assert_eq!(d.eval(&|_| None), None);
        assert_eq!(d.substitute(&|_| Some(Dim::Known(1))), Dim::Known(5));
        assert_eq!(d.symbols().into_iter().collect::<Vec<_>>(), vec!["seq".to_string()]);
    }

    #[test]
    fn bounds_are_sound_for_differences() {
        let (s, t) = (Dim::sym("seq"), Dim::sym("total"));
        let b = |n: &str| Some(if n == "seq" { (1, 128) } else { (1, 1024) });
        assert_eq!(t.sub(&s).bounds(&b), Some((-127, 1023)));
        assert_eq!(s.mul(&Dim::Known(64)).bounds(&b), Some((64, 8192)));
        assert_eq!(t.minimum(&Dim::Known(512)).bounds(&b), Some((1, 512)));
        assert_eq!(s.add(&Dim::sym("other")).bounds(&|n| (n == "seq").then_some((1, 2))), None);
    }

    #[test]
    fn known_floor_div_rounds_down() {
        assert_eq!(Dim::Known(-7).floor_div(&Dim::Known(2)), Some(Dim::Known(-4)));
        assert_eq!(Dim::Known(7).floor_div(&Dim::Known(-2)), Some(Dim::Known(-4)));
        assert_eq!(Dim::Known(7).floor_div(&Dim::Known(0)), None);
    }
}
