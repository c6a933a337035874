//! tarn-verify's tests: the checker on hand-made histories, the runner
//! against a real server with faults, the fuzz corpus.

mod checker;
mod corpus;
mod runner;
