"""Access policy: who may pass this door when — validity, suspension, groups, schedules, holidays."""
