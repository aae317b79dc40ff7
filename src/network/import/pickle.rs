//! A small pickle virtual machine: just enough of protocol 2 to read the
//! object graph that legacy (pre-zip) `torch.save` writes.
//!
//! It knows nothing about torch beyond two callables, `OrderedDict` and
//! `_rebuild_tensor_v2`, and the persistent ids of storages; everything else
//! is refused with an error that names what was found. It never panics on
//! malformed input. Objects are values: a memoised container that is later
//! mutated is not shared with its memo copy, which is fine for the files
//! `torch.save` writes (their mutated containers are never fetched back).
//!
//! Over 400 lines: the opcode dispatch is one `match` that reads best whole, and its tests
//! (about 30 lines) sit beside it; splitting either off would leave a file that cannot be read alone.

use anyhow::{Context, Result, anyhow, bail};

/// Element type of a torch storage, named by its class (`torch.FloatStorage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    F32,
    F64,
    I64,
    U8,
}

impl StorageKind {
    fn from_class(name: &str) -> Option<Self> {
        match name {
            "FloatStorage" => Some(Self::F32),
            "DoubleStorage" => Some(Self::F64),
            "LongStorage" => Some(Self::I64),
            "ByteStorage" => Some(Self::U8),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F64 | Self::I64 => 8,
            Self::U8 => 1,
        }
    }
}

/// A tensor as the pickle describes it: a view into a named storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage_key: String,
    pub kind: StorageKind,
    pub storage_numel: usize,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A value on the pickle stack.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Plain dicts and `OrderedDict`s alike, in insertion order.
    Dict(Vec<(Value, Value)>),
    Global {
        module: String,
        name: String,
    },
    Storage {
        key: String,
        kind: StorageKind,
        numel: usize,
    },
    Tensor(TensorRef),
}

/// Reads one pickle (up to and including its STOP opcode) starting at
/// `data[*pos]`, and advances `pos` past it.
pub fn load(data: &[u8], pos: &mut usize) -> Result<Value> {
    let mut vm = Vm { data, pos: *pos, stack: Vec::new(), marks: Vec::new(), memo: Default::default() };
    let value = vm.run()?;
    *pos = vm.pos;
    Ok(value)
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u32, Value>,
}

impl Vm<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.data.len());
        let end = end.ok_or_else(|| anyhow!("pickle truncated at byte {}", self.pos))?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let len = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("unterminated GLOBAL"))?;
        let text = std::str::from_utf8(&rest[..len]).context("GLOBAL name is not UTF-8")?.to_owned();
        self.pos += len + 1;
        Ok(text)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            bail!("pickle pops across a MARK");
        }
        self.stack.pop().ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| anyhow!("pickle stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| anyhow!("pickle has no MARK to pop to"))?;
        if mark > self.stack.len() {
            bail!("pickle MARK beyond the stack");
        }
        Ok(self.stack.split_off(mark))
    }

    fn put(&mut self, index: u32) -> Result<()> {
        let value = self.stack.last().cloned().ok_or_else(|| anyhow!("PUT on an empty stack"))?;
        self.memo.insert(index, value);
        Ok(())
    }

    fn get(&mut self, index: u32) -> Result<()> {
        let value = self.memo.get(&index).cloned().ok_or_else(|| anyhow!("GET of unknown memo {index}"))?;
        self.stack.push(value);
        Ok(())
    }

    fn tuple_of(&mut self, n: usize) -> Result<()> {
        if self.stack.len() < n {
            bail!("pickle stack underflow");
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.stack.push(Value::Tuple(items));
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("SETITEMS with an odd number of items");
        }
        let Value::Dict(entries) = self.top()? else { bail!("SETITEM(S) on something that is not a dict") };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            match entries.iter_mut().find(|(key, _)| *key == k) {
                Some(slot) => slot.1 = v,
                None => entries.push((k, v)),
            }
        }
        Ok(())
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 2 {
                        bail!("pickle protocol {proto} is not supported (only 2)");
                    }
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let bytes = self.take(n)?.to_vec();
                    self.stack.push(long1(&bytes)?);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    let text = std::str::from_utf8(self.take(n)?).context("BINUNICODE is not UTF-8")?.to_owned();
                    self.stack.push(Value::Str(text));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global { module, name });
                }
                b'q' => {
                    let i = self.u8()?;
                    self.put(i.into())?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.get(i.into())?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.array()?);
                    self.get(i)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                0x85 => self.tuple_of(1)?,
                0x86 => self.tuple_of(2)?,
                0x87 => self.tuple_of(3)?,
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let Value::List(list) = self.top()? else { bail!("APPEND to something that is not a list") };
                    list.push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(list) = self.top()? else { bail!("APPENDS to something that is not a list") };
                    list.extend(items);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = reduce(callable, args)?;
                    self.stack.push(value);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let value = persistent_storage(pid)?;
                    self.stack.push(value);
                }
                b'b' => {
                    // `OrderedDict` state (torch's `_metadata` attribute): not needed.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        bail!("BUILD on something other than a dict is not supported");
                    }
                }
                other => bail!("unsupported pickle opcode 0x{other:02x} at byte {at}"),
            }
        }
    }
}

/// LONG1: little-endian two's complement of `bytes.len()` bytes.
fn long1(bytes: &[u8]) -> Result<Value> {
    if bytes.len() > 16 {
        bail!("LONG1 of {} bytes is too large", bytes.len());
    }
    let mut v: i128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        v |= i128::from(b) << (8 * i);
    }
    if let Some(&last) = bytes.last()
        && last & 0x80 != 0
        && bytes.len() < 16
    {
        v -= 1i128 << (8 * bytes.len());
    }
    match i64::try_from(v) {
        Ok(v) => Ok(Value::Int(v)),
        // Too wide for i64 (torch's magic number): keep its decimal text.
        Err(_) => Ok(Value::Str(v.to_string())),
    }
}

fn reduce(callable: Value, args: Value) -> Result<Value> {
    let Value::Global { module, name } = callable else { bail!("REDUCE on a non-global callable") };
    let Value::Tuple(args) = args else { bail!("REDUCE arguments are not a tuple") };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") => rebuild_tensor(args),
        _ => bail!("unsupported callable {module}.{name} in the pickle"),
    }
}

fn as_usize(v: &Value, what: &str) -> Result<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| anyhow!("{what} is negative")),
        other => bail!("{what} is not an integer: {other:?}"),
    }
}

fn usize_tuple(v: &Value, what: &str) -> Result<Vec<usize>> {
    let Value::Tuple(items) = v else { bail!("{what} is not a tuple") };
    items.iter().map(|i| as_usize(i, what)).collect()
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`.
fn rebuild_tensor(args: Vec<Value>) -> Result<Value> {
    if !(6..=7).contains(&args.len()) {
        bail!("_rebuild_tensor_v2 with {} arguments", args.len());
    }
    let Value::Storage { key, kind, numel } = &args[0] else { bail!("tensor without a storage") };
    let size = usize_tuple(&args[2], "tensor size")?;
    let stride = usize_tuple(&args[3], "tensor stride")?;
    if size.len() != stride.len() {
        bail!("tensor size and stride differ in rank");
    }
    Ok(Value::Tensor(TensorRef {
        storage_key: key.clone(),
        kind: *kind,
        storage_numel: *numel,
        offset: as_usize(&args[1], "storage offset")?,
        size,
        stride,
    }))
}

/// Persistent id `('storage', torch.XStorage, key, location, numel, view_metadata)`.
fn persistent_storage(pid: Value) -> Result<Value> {
    let Value::Tuple(items) = pid else { bail!("persistent id is not a tuple") };
    let [tag, class, key, _location, numel, view] = items.as_slice() else {
        bail!("persistent id with {} fields", items.len())
    };
    if *tag != Value::Str("storage".into()) {
        bail!("persistent id of unsupported kind {tag:?}");
    }
    if *view != Value::None {
        bail!("storage views are not supported");
    }
    let Value::Global { module, name } = class else { bail!("storage class is not a global") };
    let kind = match module.as_str() {
        "torch" => StorageKind::from_class(name),
        _ => None,
    };
    let kind = kind.ok_or_else(|| anyhow!("unsupported storage type {module}.{name}"))?;
    let Value::Str(key) = key else { bail!("storage key is not a string") };
    Ok(Value::Storage { key: key.clone(), kind, numel: as_usize(numel, "storage size")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long1_signs() {
        assert_eq!(long1(&[0xff]).ok(), Some(Value::Int(-1)));
        assert_eq!(long1(&[0x7f]).ok(), Some(Value::Int(127)));
        assert_eq!(long1(&[]).ok(), Some(Value::Int(0)));
    }

    #[test]
    fn small_dict() {
        // {'a': 1, 'b': [True, None]} with protocol 2.
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b]q\x01(\x88Neu.";
        let mut pos = 0;
        let v = load(bytes, &mut pos).expect("valid pickle");
        assert_eq!(pos, bytes.len());
        let expected = Value::Dict(vec![
            (Value::Str("a".into()), Value::Int(1)),
            (Value::Str("b".into()), Value::List(vec![Value::Bool(true), Value::None])),
        ]);
        assert_eq!(v, expected);
    }

    #[test]
    fn errors_not_panics() {
        for bad in [&b""[..], b"\x80\x02", b"\x80\x05.", b"\x80\x02\xff", b"s.", b"X\xff\xff\xff\xff", b"e."] {
            assert!(load(bad, &mut 0).is_err(), "{bad:?}");
        }
    }
}
