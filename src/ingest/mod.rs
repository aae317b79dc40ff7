//! Catalogue uploads: reading and checking archives. The ingest job itself
//! lives in `jobs::ingest`.

pub mod archive;
