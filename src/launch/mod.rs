//! Where work runs: this process, its fold workers ([`local`], through one [`worker`] command
//! builder and one process [`pool`], also used by sweeps), or a Slurm cluster ([`slurm`], as
//! dependent jobs).

pub mod local;
pub mod pool;
pub mod slurm;
pub mod worker;
