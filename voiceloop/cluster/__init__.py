"""voiceloop past one machine: workers hold calls, a gateway places them, admission by measured capacity."""
