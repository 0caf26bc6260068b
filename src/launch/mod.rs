//! Where `pipeline run all` runs its work besides this process and its fold workers:
//! [`slurm`] submits it to a Slurm cluster as dependent jobs.

pub mod slurm;
