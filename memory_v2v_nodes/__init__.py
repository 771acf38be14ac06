"""Memory-V2V: multi-turn video re-rendering (ReCamMaster on Wan2.1) with a memory of earlier turns."""
