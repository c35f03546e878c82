"""Memory planning: what a run will hold on its device, before anything is allocated."""
